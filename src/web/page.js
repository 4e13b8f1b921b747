// The newsroom page: the watches with their charts, and the milestones as
// they are stored, from the server's event stream (/events). Every kind of
// milestone is shown the same way, from the fields every one has (headline,
// watch_id, caused_by), so a kind added to the server shows here as it is.
"use strict";

// With --auth-reads the page is opened as /?token=TOKEN and passes the
// token on: EventSource and <img> cannot send an Authorization header.
const token = new URLSearchParams(location.search).get("token");

function url(path, params = {}) {
  const query = new URLSearchParams(params);
  if (token) query.set("token", token);
  const text = query.toString();
  return text ? `${path}?${text}` : path;
}

const charts = new Map(); // watch id -> its chart's <img>

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function chartUrl(id, version) {
  const params = version === undefined ? {} : { v: version };
  return url(`/watches/${encodeURIComponent(id)}/chart.svg`, params);
}

function addWatch(watch) {
  const section = element("section", "watch");
  section.dataset.watch = watch.id;
  section.append(element("h3", "", watch.name), element("p", "series", watch.series));
  const img = element("img");
  img.alt = `${watch.name}: the series per period`;
  img.src = chartUrl(watch.id);
  section.append(img);
  document.getElementById("watches").append(section);
  charts.set(watch.id, img);
}

async function loadWatches() {
  const response = await fetch(url("/watches"));
  if (!response.ok) {
    setStatus(await response.text());
    return;
  }
  for (const watch of await response.json()) {
    if (!charts.has(watch.id)) addWatch(watch);
  }
  document.getElementById("watches-empty").hidden = charts.size > 0;
}

// A milestone of a watch redraws its chart; one of a watch the page does not
// show yet (created since it loaded) brings the list up to date.
function redraw(watchId, sequence) {
  const img = charts.get(watchId);
  if (img) img.src = chartUrl(watchId, sequence);
  else loadWatches();
}

function describeKey(key) {
  const flow = (key.flow || "").replace(/^FLOW_/, "").toLowerCase();
  return `${key.reporter} ↔ ${key.partner}, ${key.period}, ${flow}, ${key.commodity} (${key.currency})`;
}

function show(event) {
  const item = element("li", "milestone");
  item.dataset.sequence = event.sequence;
  if (event.watch_id) item.dataset.watch = event.watch_id;
  const time = event.time ? new Date(event.time).toLocaleString() : "";
  const kind = (event.kind || "").replace(/_/g, " ");
  item.append(element("div", "meta", `#${event.sequence} · ${time} · ${kind}`));
  item.append(element("p", "headline", event.headline || kind));
  const causes = event.caused_by || [];
  if (causes.length > 0) {
    const list = element("ul", "caused-by");
    for (const key of causes) list.append(element("li", "", `caused by ${describeKey(key)}`));
    item.append(list);
  }
  document.getElementById("feed").prepend(item);
  document.getElementById("feed-empty").hidden = true;
}

function setStatus(text) {
  document.getElementById("status").textContent = text;
}

function setPosition(lastEventId) {
  if (lastEventId) document.getElementById("position").textContent = `at sequence ${lastEventId}`;
}

// EventSource reconnects by itself and sends the last id it saw
// (Last-Event-ID): the server resumes right after it, so nothing is missed
// or shown twice.
function follow() {
  const source = new EventSource(url("/events", { from_sequence: 1, only: "milestones" }));
  source.onopen = () => setStatus("live");
  source.onerror = () => {
    setStatus(source.readyState === EventSource.CLOSED ? "disconnected: reload the page" : "reconnecting…");
  };
  source.onmessage = (message) => {
    const event = JSON.parse(message.data);
    show(event);
    setPosition(message.lastEventId);
    if (event.watch_id) redraw(event.watch_id, event.sequence);
  };
  source.addEventListener("progress", (message) => setPosition(message.lastEventId));
  source.addEventListener("failure", (message) => setStatus(JSON.parse(message.data).message));
}

loadWatches();
follow();
