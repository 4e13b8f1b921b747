//! The newsroom site (`serve --web-listen`): a page with the watches and
//! the milestones as they are stored, each watch's series as an SVG chart
//! an article can embed, and the event log as Server-Sent Events — over
//! HTTP/1.1 (hyper, as the metrics endpoint), with TLS when the server has
//! it. Reads only: it answers from the store as the gRPC reads do, and with
//! `--auth-reads` asks for the same token.

mod chart;
mod events;
mod json;
mod route;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::metrics::RunningEndpoint;
use crate::security::{Auth, TlsFiles};
use crate::store::Store;
use route::{Rejection, Route};

const PAGE: &str = include_str!("page.html");
const SCRIPT: &str = include_str!("page.js");

type Body = UnsyncBoxBody<Bytes, Infallible>;
type Response = http::Response<Body>;

/// What the site serves from.
pub struct Site {
    store: Arc<Store>,
    auth: Auth,
    /// One permit per open event stream.
    streams: Arc<Semaphore>,
    max_streams: usize,
}

impl Site {
    /// At most `max_streams` event streams at once (the server's
    /// `--max-subscribers`, counted apart from gRPC subscriptions).
    pub fn new(store: Arc<Store>, auth: Auth, max_streams: usize) -> Site {
        Site {
            store,
            auth,
            streams: Arc::new(Semaphore::new(max_streams)),
            max_streams,
        }
    }
}

/// A bound site, not yet serving.
pub struct Endpoint {
    listener: TcpListener,
    site: Arc<Site>,
    tls: Option<TlsAcceptor>,
}

impl Endpoint {
    /// Binds `addr` (port 0 picks a free port); with `tls`, serves HTTPS
    /// with the gRPC server's certificate.
    pub async fn bind(addr: SocketAddr, site: Site, tls: Option<&TlsFiles>) -> anyhow::Result<Endpoint> {
        let tls = tls.map(|files| files.acceptor(b"http/1.1")).transpose()?;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot serve the web page on {addr}: {e}"))?;
        Ok(Endpoint {
            listener,
            site: Arc::new(site),
            tls,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until stopped; stopping also ends the open event streams.
    pub fn spawn(self) -> RunningEndpoint {
        let (site, tls) = (self.site, self.tls);
        RunningEndpoint::serve(self.listener, "web", move |stream, stop| {
            serve_connection(stream, site.clone(), tls.clone(), stop)
        })
    }
}

async fn serve_connection(
    stream: TcpStream,
    site: Arc<Site>,
    tls: Option<TlsAcceptor>,
    stop: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let served = match tls {
        None => serve_http(stream, site, stop).await,
        Some(acceptor) => {
            match tokio::time::timeout(crate::security::HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => serve_http(stream, site, stop).await,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "web TLS handshake failed");
                    return;
                }
                Err(_) => return,
            }
        }
    };
    if let Err(e) = served {
        tracing::debug!(error = %e, "web connection ended");
    }
}

async fn serve_http<IO>(io: IO, site: Arc<Site>, stop: CancellationToken) -> hyper::Result<()>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request| {
        let (site, stop) = (site.clone(), stop.clone());
        async move { Ok::<_, Infallible>(respond(&site, &request, stop).await) }
    });
    hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .serve_connection(hyper_util::rt::TokioIo::new(io), service)
        .await
}

async fn respond<B>(site: &Arc<Site>, request: &http::Request<B>, stop: CancellationToken) -> Response {
    let answer = async {
        let parsed = route::parse(request.method(), request.uri(), request.headers())?;
        if parsed.route != Route::Script {
            authorize(&site.auth, request.headers(), parsed.query_token.as_deref())?;
        }
        serve(site, parsed.route, stop).await
    };
    answer.await.unwrap_or_else(plain)
}

async fn serve(
    site: &Arc<Site>,
    route: Route,
    stop: CancellationToken,
) -> std::result::Result<Response, Rejection> {
    match route {
        Route::Page => Ok(with_type(full(PAGE), "text/html; charset=utf-8")),
        Route::Script => Ok(with_type(full(SCRIPT), "text/javascript; charset=utf-8")),
        Route::Watches => watches(&site.store).map_err(rejection),
        Route::Chart(id) => {
            let store = site.store.clone();
            let drawn = tokio::task::spawn_blocking(move || chart(&store, &id)).await;
            drawn.unwrap_or_else(|e| Err(Rejection::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())))
        }
        Route::Events(from) => event_stream(site, from, stop),
    }
}

/// With `--auth-reads`, every page and endpoint but the script (which
/// holds no data) needs the token: `Authorization: Bearer TOKEN`, or
/// `?token=TOKEN` for what a browser loads by URL.
fn authorize(
    auth: &Auth,
    headers: &HeaderMap,
    query_token: Option<&str>,
) -> std::result::Result<(), Rejection> {
    let Some(token) = auth.token.as_ref().filter(|_| auth.reads) else {
        return Ok(());
    };
    let unauthorized = |message: &str| Rejection::new(StatusCode::UNAUTHORIZED, message);
    let presented = match headers.get(header::AUTHORIZATION) {
        Some(value) => match value.as_bytes().split_at_checked(7) {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case(b"bearer ") => rest.trim_ascii(),
            _ => return Err(unauthorized("the Authorization header must be `Bearer TOKEN`")),
        },
        None => match query_token {
            Some(token) => token.as_bytes(),
            None => {
                return Err(unauthorized(
                    "this server needs its read token (--auth-reads): send `Authorization: Bearer TOKEN`, \
                     or open the page as /?token=TOKEN",
                ));
            }
        },
    };
    if token.matches(presented) {
        Ok(())
    } else {
        Err(unauthorized("the token is not valid for this server"))
    }
}

/// The watches, for the page's list.
fn watches(store: &Store) -> Result<Response> {
    let watches: Vec<serde_json::Value> = store
        .list_watches()?
        .iter()
        .map(|(watch, _)| {
            serde_json::json!({
                "id": watch.id.as_str(),
                "name": watch.name,
                "series": watch.describe(),
                "chart": format!("/watches/{}/chart.svg", watch.id),
            })
        })
        .collect();
    Ok(with_type(
        full(serde_json::Value::Array(watches).to_string()),
        "application/json",
    ))
}

fn chart(store: &Store, id: &crate::domain::WatchId) -> std::result::Result<Response, Rejection> {
    let chart = chart::Chart::load(store, id)
        .map_err(rejection)?
        .ok_or_else(|| Rejection::not_found(format!("no watch {id}")))?;
    let svg = chart
        .svg()
        .map_err(|e| Rejection::new(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    Ok(with_type(full(svg), "image/svg+xml"))
}

fn event_stream(
    site: &Site,
    from: route::EventsFrom,
    stop: CancellationToken,
) -> std::result::Result<Response, Rejection> {
    // Released when the body is dropped: the stream ended or its client left.
    let permit = site.streams.clone().try_acquire_owned().map_err(|_| {
        Rejection::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "{} event streams are open, the most this server allows (--max-subscribers); try again later",
                site.max_streams
            ),
        )
    })?;
    let frames =
        events::stream(site.store.clone(), from.sequence, from.milestones_only, stop).map_err(rejection)?;
    let body = StreamBody::new(frames.map(move |bytes| {
        let _held = &permit;
        Ok::<_, Infallible>(hyper::body::Frame::data(bytes))
    }));
    Ok(with_type(body.boxed_unsync(), "text/event-stream"))
}

fn full(content: impl Into<Bytes>) -> Body {
    Full::new(content.into()).boxed_unsync()
}

/// A response of `body`, never cached: every answer reflects the store now.
fn with_type(body: Body, content_type: &'static str) -> Response {
    let mut response = http::Response::new(body);
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // A token in the page's URL must not travel on in a Referer.
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'self'; style-src 'self' 'unsafe-inline'"),
    );
    response
}

fn plain(rejection: Rejection) -> Response {
    let mut response = with_type(full(rejection.message + "\n"), "text/plain; charset=utf-8");
    *response.status_mut() = rejection.status;
    match rejection.status {
        StatusCode::METHOD_NOT_ALLOWED => {
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET"));
        }
        StatusCode::UNAUTHORIZED => {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        _ => {}
    }
    response
}

/// A store error as the HTTP status closest to its gRPC code.
fn rejection(error: Error) -> Rejection {
    use tonic::Code;
    let status = match (&error, error.code()) {
        (Error::EventsTrimmed { .. }, _) => StatusCode::GONE,
        (_, Code::InvalidArgument) => StatusCode::BAD_REQUEST,
        (_, Code::NotFound) => StatusCode::NOT_FOUND,
        (_, Code::OutOfRange) => StatusCode::UNPROCESSABLE_ENTITY,
        (_, Code::ResourceExhausted | Code::FailedPrecondition | Code::Unavailable) => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    Rejection::new(status, error.to_string())
}
