//! What a request to the web endpoint asks for. Parsing is a pure function
//! of the method, the URI and two headers, so that every bad request gets a
//! precise status and message before anything is read, and a property test
//! can throw any request at it.

use http::{HeaderMap, Method, StatusCode, Uri};

use crate::domain::WatchId;

/// A page or endpoint of the newsroom site.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/`: the page.
    Page,
    /// `/app.js`: the page's script.
    Script,
    /// `/watches`: the watches, as JSON.
    Watches,
    /// `/watches/{id}/chart.svg`.
    Chart(WatchId),
    /// `/events`: the event log as Server-Sent Events.
    Events(EventsFrom),
}

/// Where an event stream starts and what it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventsFrom {
    /// As `Subscribe.from_sequence`: 0 is "from now on", N replays from N.
    pub sequence: u64,
    /// Only milestones (events of a watch), no record events.
    pub milestones_only: bool,
}

/// A request parsed: where it goes, and the token it carries in its query
/// (for `EventSource` and `<img>`, which cannot set headers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub route: Route,
    pub query_token: Option<String>,
}

/// A request answered with an error: its status and a message saying what
/// is wrong, sent as plain text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub status: StatusCode,
    pub message: String,
}

impl Rejection {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Rejection {
            status,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Rejection::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Rejection::new(StatusCode::NOT_FOUND, message)
    }
}

/// Parses a request; the query and `Last-Event-ID` matter only where the
/// route reads them.
pub fn parse(method: &Method, uri: &Uri, headers: &HeaderMap) -> Result<Parsed, Rejection> {
    let route = route_of(uri.path())?;
    if method != Method::GET {
        return Err(Rejection::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} {}: the newsroom site only answers GET", uri.path()),
        ));
    }
    let query = Query::parse(uri.query().unwrap_or(""))?;
    let route = match route {
        Route::Events(_) => Route::Events(events_from(&query, headers)?),
        other => other,
    };
    Ok(Parsed {
        route,
        query_token: query.token,
    })
}

fn route_of(path: &str) -> Result<Route, Rejection> {
    match path {
        "/" => return Ok(Route::Page),
        "/app.js" => return Ok(Route::Script),
        "/watches" => return Ok(Route::Watches),
        "/events" => {
            return Ok(Route::Events(EventsFrom {
                sequence: 0,
                milestones_only: false,
            }));
        }
        _ => {}
    }
    if let Some(id) = path
        .strip_prefix("/watches/")
        .and_then(|rest| rest.strip_suffix("/chart.svg"))
    {
        return WatchId::parse(id)
            .map(Route::Chart)
            .map_err(|e| Rejection::not_found(format!("no watch {id:?}: {}", e.0)));
    }
    Err(Rejection::not_found(format!(
        "not found: {path:?}; the newsroom page is /, a watch's chart \
         /watches/{{id}}/chart.svg, the events /events"
    )))
}

/// The query parameters the site reads; others (a cache-busting `v`) are
/// ignored.
#[derive(Default)]
struct Query {
    token: Option<String>,
    from_sequence: Option<String>,
    only: Option<String>,
}

impl Query {
    fn parse(query: &str) -> Result<Query, Rejection> {
        let mut out = Query::default();
        for (name, value) in form_urlencoded::parse(query.as_bytes()) {
            let slot = match &*name {
                "token" => &mut out.token,
                "from_sequence" => &mut out.from_sequence,
                "only" => &mut out.only,
                _ => continue,
            };
            if slot.replace(value.into_owned()).is_some() {
                return Err(Rejection::bad_request(format!(
                    "query parameter {name} is given twice"
                )));
            }
        }
        Ok(out)
    }
}

/// `Last-Event-ID` (sent by a reconnecting `EventSource`) resumes right
/// after that event and wins over `from_sequence`, which stays in the URL
/// the browser reconnects to.
fn events_from(query: &Query, headers: &HeaderMap) -> Result<EventsFrom, Rejection> {
    let milestones_only = match query.only.as_deref() {
        None => false,
        Some("milestones") => true,
        Some(other) => {
            return Err(Rejection::bad_request(format!(
                "only={other:?}: the one filter is only=milestones"
            )));
        }
    };
    let sequence = match headers.get("last-event-id") {
        Some(last) => last
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .and_then(|s| s.checked_add(1))
            .ok_or_else(|| {
                Rejection::bad_request(format!(
                    "Last-Event-ID {last:?} is not the sequence number of an event"
                ))
            })?,
        None => match &query.from_sequence {
            None => 0,
            Some(s) => s.parse().map_err(|_| {
                Rejection::bad_request(format!(
                    "from_sequence={s:?} is not a sequence number (0: from now on, N: from event N)"
                ))
            })?,
        },
    };
    Ok(EventsFrom {
        sequence,
        milestones_only,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn request(method: &str, uri: &str, last_event_id: Option<&str>) -> Result<Parsed, Rejection> {
        let mut headers = HeaderMap::new();
        if let Some(id) = last_event_id {
            headers.insert("last-event-id", id.parse().unwrap());
        }
        let uri: Uri = uri.parse().unwrap();
        parse(&method.parse().unwrap(), &uri, &headers)
    }

    fn route(uri: &str) -> Route {
        request("GET", uri, None).unwrap().route
    }

    fn status(method: &str, uri: &str) -> StatusCode {
        request(method, uri, None).unwrap_err().status
    }

    #[test]
    fn routes() {
        assert_eq!(route("/"), Route::Page);
        assert_eq!(route("/app.js?v=3"), Route::Script);
        assert_eq!(route("/watches"), Route::Watches);
        assert_eq!(
            route("/watches/w1/chart.svg?v=19&token=t"),
            Route::Chart(WatchId::parse("w1").unwrap())
        );
        assert_eq!(
            route("/events?from_sequence=17&only=milestones"),
            Route::Events(EventsFrom {
                sequence: 17,
                milestones_only: true
            })
        );
        assert_eq!(
            request("GET", "/?token=a%2Bb", None)
                .unwrap()
                .query_token
                .as_deref(),
            Some("a+b")
        );
    }

    #[test]
    fn last_event_id_resumes_after_it() {
        let parsed = request("GET", "/events?from_sequence=1", Some("19")).unwrap();
        assert_eq!(
            parsed.route,
            Route::Events(EventsFrom {
                sequence: 20,
                milestones_only: false
            })
        );
        for bad in ["x", "-1", "18446744073709551615"] {
            let e = request("GET", "/events", Some(bad)).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{bad}");
            assert!(e.message.contains("Last-Event-ID"), "{}", e.message);
        }
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        assert_eq!(status("GET", "/nope"), StatusCode::NOT_FOUND);
        assert_eq!(status("GET", "/watches/"), StatusCode::NOT_FOUND);
        assert_eq!(status("GET", "/watches/W1/chart.svg"), StatusCode::NOT_FOUND);
        assert_eq!(status("GET", "/watches/a/b/chart.svg"), StatusCode::NOT_FOUND);
        assert_eq!(status("POST", "/events"), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(status("POST", "/nope"), StatusCode::NOT_FOUND);
        assert_eq!(status("GET", "/events?from_sequence=-3"), StatusCode::BAD_REQUEST);
        assert_eq!(status("GET", "/events?only=records"), StatusCode::BAD_REQUEST);
        assert_eq!(status("GET", "/?token=a&token=b"), StatusCode::BAD_REQUEST);
        let e = request("GET", "/watches/W1/chart.svg", None).unwrap_err();
        assert!(e.message.starts_with("no watch \"W1\""), "{}", e.message);
    }

    proptest! {
        /// Any path, query and Last-Event-ID: an answer, never a panic; a
        /// rejection is a client error with a message.
        #[test]
        fn any_request_is_parsed_or_rejected(
            method in prop::sample::select(vec!["GET", "POST", "HEAD", "DELETE"]),
            segments in prop::collection::vec("[a-zA-Z0-9_.%~-]{0,12}", 0..5),
            query in "[a-z_=&%0-9A-F+.-]{0,40}",
            last in proptest::option::of("[ -~]{0,25}"),
        ) {
            let uri = format!("/{}?{query}", segments.join("/"));
            let Ok(uri) = uri.parse::<Uri>() else { return Ok(()) };
            let mut headers = HeaderMap::new();
            if let Some(value) = last.as_deref().and_then(|l| l.parse().ok()) {
                headers.insert("last-event-id", value);
            }
            let method: Method = method.parse().unwrap();
            match parse(&method, &uri, &headers) {
                Ok(parsed) => {
                    prop_assert_eq!(&method, &Method::GET);
                    if let Route::Chart(id) = &parsed.route {
                        prop_assert_eq!(uri.path(), format!("/watches/{id}/chart.svg"));
                    }
                }
                Err(rejection) => {
                    prop_assert!(rejection.status.is_client_error());
                    prop_assert!(!rejection.message.is_empty());
                }
            }
        }
    }
}
