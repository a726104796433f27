//! The agent's HTTP API, served to proxies over mTLS:
//!
//! | route | answer |
//! |---|---|
//! | `GET /v1/instances` | JSON array of instances on this node |
//! | `GET /v1/instances?watch` | NDJSON stream: a `snapshot` event, then `upsert`/`remove` |
//! | `GET /v1/instances/<id>/metrics` | the container's node_exporter view, for the tenant the proxy names ([`crate::authorization`]) |
//! | `GET /v1/node/metrics` | the node itself |
//! | `GET /healthz` | `ok` |
//! | `GET /metrics` | the agent's own metrics |
//!
//! Errors are mapped to statuses in one place, [`ServeError::status`].

use std::convert::Infallible;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use flate2::write::GzEncoder;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use lookout_discovery::{is_dns_label, InstanceEvent};

use crate::cache::{CollectError, Collector};
use crate::exposition::Format;
use crate::registry::Registry;
use crate::render::{self, Selection};
use crate::telemetry::{RequestLabels, Telemetry};

/// A response body: whole or streamed.
pub type Body = BoxBody<Bytes, Infallible>;

/// Longest scrape deadline honoured from `X-Prometheus-Scrape-Timeout-Seconds`.
const MAX_DEADLINE: Duration = Duration::from_secs(120);
/// Blank-line heartbeat on watch streams, so a dead peer is noticed by either side.
const WATCH_HEARTBEAT: Duration = Duration::from_secs(15);

/// Everything a request handler needs.
pub struct Api {
    /// The containers.
    pub registry: Arc<Registry>,
    /// Snapshot collection.
    pub collector: Collector,
    /// Own metrics.
    pub telemetry: Arc<Telemetry>,
    /// This node's id.
    pub node_id: String,
    /// Deadline when the request states none.
    pub default_timeout: Duration,
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Malformed request (bad id, bad query).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// No such route or instance.
    #[error("not found")]
    NotFound,
    /// Only GET is served.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The container exited during the request.
    #[error("instance is gone")]
    Gone,
    /// The deadline passed.
    #[error("{0}")]
    Timeout(String),
    /// Anything else.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ServeError {
    /// The one mapping from failures to statuses.
    pub fn status(&self) -> StatusCode {
        match self {
            ServeError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ServeError::NotFound | ServeError::Gone => StatusCode::NOT_FOUND,
            ServeError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ServeError::Timeout(_) => StatusCode::SERVICE_UNAVAILABLE,
            ServeError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn response(&self) -> Response<Body> {
        let mut r = text(self.status(), format!("{self}\n"));
        if matches!(self, ServeError::MethodNotAllowed) {
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET"));
        }
        r
    }
}

impl From<CollectError> for ServeError {
    fn from(e: CollectError) -> Self {
        match e {
            CollectError::Gone => ServeError::Gone,
            CollectError::Timeout(_) => ServeError::Timeout(e.to_string()),
            CollectError::Failed(m) => ServeError::Internal(m),
        }
    }
}

fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into()).boxed()
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

impl Api {
    /// Serves one request; never fails at the HTTP level.
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
    ) -> Result<Response<Body>, Infallible> {
        let (route, result) = self.route(&req).await;
        let response = result.unwrap_or_else(|e| {
            if matches!(e, ServeError::Internal(_)) {
                tracing::warn!(route, error = %e, "request failed");
            }
            e.response()
        });
        self.telemetry
            .requests
            .get_or_create(&RequestLabels {
                route,
                code: response.status().as_u16(),
            })
            .inc();
        Ok(response)
    }

    async fn route(
        &self,
        req: &Request<Incoming>,
    ) -> (&'static str, Result<Response<Body>, ServeError>) {
        let path = req.uri().path();
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let route = match segments.as_slice() {
            ["healthz"] => "healthz",
            ["metrics"] => "own_metrics",
            ["v1", "instances"] if has_param(req.uri().query(), "watch") => "watch",
            ["v1", "instances"] => "instances",
            ["v1", "instances", _, "metrics"] => "instance_metrics",
            ["v1", "node", "metrics"] => "node_metrics",
            _ => "other",
        };
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return (route, Err(ServeError::MethodNotAllowed));
        }
        let result = match (route, segments.as_slice()) {
            ("healthz", _) => Ok(text(StatusCode::OK, "ok\n".into())),
            ("own_metrics", _) => {
                self.telemetry
                    .containers
                    .set(self.registry.inventory().containers.len() as i64);
                let refused = self.registry.refused();
                for (reason, n) in [
                    ("conflict", refused.conflicts),
                    ("host_process", refused.host_processes),
                ] {
                    self.telemetry
                        .claims_refused
                        .get_or_create(&crate::telemetry::RefusalLabels { reason })
                        .set(i64::try_from(n).unwrap_or(i64::MAX));
                }
                let mut r = text(StatusCode::OK, self.telemetry.encode());
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                );
                Ok(r)
            }
            ("instances", _) => self.list(),
            ("watch", _) => Ok(self.watch()),
            ("instance_metrics", [_, _, id, _]) => self.instance_metrics(req, id).await,
            ("node_metrics", _) => self.node_metrics(req).await,
            _ => Err(ServeError::NotFound),
        };
        (route, result)
    }

    fn list(&self) -> Result<Response<Body>, ServeError> {
        let body = serde_json::to_vec(&self.registry.inventory().instances())
            .map_err(|e| ServeError::Internal(e.to_string()))?;
        let mut r = Response::new(full(body));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        Ok(r)
    }

    fn watch(&self) -> Response<Body> {
        let mut rx = self.registry.subscribe();
        let node = self.node_id.clone();
        let (tx, body_rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(16);
        tokio::spawn(async move {
            let line = |ev: &InstanceEvent| {
                let mut v = serde_json::to_vec(ev).unwrap_or_default();
                v.push(b'\n');
                Ok(Frame::data(Bytes::from(v)))
            };
            let mut last = rx.borrow_and_update().clone();
            if tx
                .send(line(&InstanceEvent::Snapshot {
                    node: Some(node),
                    instances: last.instances(),
                }))
                .await
                .is_err()
            {
                return;
            }
            loop {
                tokio::select! {
                    changed = rx.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        let next = rx.borrow_and_update().clone();
                        for ev in next.diff(&last) {
                            if tx.send(line(&ev)).await.is_err() {
                                return;
                            }
                        }
                        last = next;
                    }
                    _ = tokio::time::sleep(WATCH_HEARTBEAT) => {
                        if tx.send(Ok(Frame::data(Bytes::from_static(b"\n")))).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        let stream = tokio_stream_from(body_rx);
        let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-ndjson"),
        );
        r
    }

    fn deadline(&self, req: &Request<Incoming>) -> (Instant, Duration) {
        let stated = req
            .headers()
            .get("x-prometheus-scrape-timeout-seconds")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s > 0.0)
            .map(|s| Duration::from_secs_f64(s).min(MAX_DEADLINE));
        // Answer a little before the client gives up, so it gets an answer, not a timeout.
        let budget = stated.unwrap_or(self.default_timeout).mul_f64(0.95);
        (Instant::now() + budget, budget)
    }

    async fn instance_metrics(
        &self,
        req: &Request<Incoming>,
        id: &str,
    ) -> Result<Response<Body>, ServeError> {
        if !is_dns_label(id) {
            return Err(ServeError::BadRequest(format!(
                "instance id {:?} is not a DNS label",
                id.chars().take(80).collect::<String>()
            )));
        }
        let selection = Selection::from_query(req.uri().query()).map_err(ServeError::BadRequest)?;
        let tracked = self
            .registry
            .inventory()
            .containers
            .get(id)
            .cloned()
            .ok_or(ServeError::NotFound)?;
        if let Err(refusal) =
            crate::authorization::check(req.headers(), &tracked.container.instance)
        {
            self.telemetry
                .scrapes_refused
                .get_or_create(&crate::telemetry::RefusalLabels {
                    reason: refusal.reason(),
                })
                .inc();
            tracing::debug!(id, reason = refusal.reason(), "scrape refused");
            return Err(ServeError::NotFound);
        }
        let (deadline, _) = self.deadline(req);
        let snapshot = match self.collector.snapshot(&tracked, deadline).await {
            Ok(s) => s,
            Err(CollectError::Gone) => {
                self.registry.poke();
                return Err(ServeError::Gone);
            }
            Err(e) => return Err(e.into()),
        };
        let escaped = snapshot
            .net
            .as_ref()
            .map_or(0, |devs| devs.iter().filter(|d| d.escaped).count());
        if escaped > 0 {
            self.telemetry
                .interface_names_escaped
                .inc_by(escaped as u64);
        }
        let format = negotiate(req);
        let view = render::container(
            &snapshot,
            &tracked.container.instance,
            self.collector.host(),
            &selection,
            format,
        );
        for collector in view.failed {
            self.telemetry
                .collector_errors
                .get_or_create(&crate::telemetry::CollectorLabels { collector })
                .inc();
        }
        Ok(exposition_response(req, format, view.text))
    }

    async fn node_metrics(&self, req: &Request<Incoming>) -> Result<Response<Body>, ServeError> {
        let format = negotiate(req);
        let host = self.collector.host().clone();
        let node = self.node_id.clone();
        let (_, budget) = self.deadline(req);
        let body = tokio::time::timeout(
            budget,
            tokio::task::spawn_blocking(move || crate::node::render(&host, &node, format)),
        )
        .await
        .map_err(|_| ServeError::Timeout("node collection timed out".into()))?
        .map_err(|e| ServeError::Internal(e.to_string()))?
        .map_err(|e| ServeError::Internal(e.to_string()))?;
        Ok(exposition_response(req, format, body))
    }
}

fn negotiate(req: &Request<Incoming>) -> Format {
    Format::negotiate(
        req.headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok()),
    )
}

fn has_param(query: Option<&str>, name: &str) -> bool {
    query.unwrap_or("").split('&').any(|p| {
        p == name
            || p.strip_prefix(name)
                .is_some_and(|r| r.starts_with('=') && r != "=false" && r != "=0")
    })
}

/// True if the client accepts gzip (q > 0).
pub fn accepts_gzip(value: Option<&str>) -> bool {
    value.unwrap_or("").split(',').any(|item| {
        let mut parts = item.split(';').map(str::trim);
        let coding = parts.next().unwrap_or("");
        let q = parts
            .find_map(|p| p.strip_prefix("q="))
            .and_then(|q| q.parse::<f32>().ok())
            .unwrap_or(1.0);
        (coding.eq_ignore_ascii_case("gzip") || coding == "*") && q > 0.0
    })
}

fn exposition_response(req: &Request<Incoming>, format: Format, body: String) -> Response<Body> {
    let gzip = accepts_gzip(
        req.headers()
            .get(header::ACCEPT_ENCODING)
            .and_then(|v| v.to_str().ok()),
    );
    let mut r = if gzip {
        let mut enc = GzEncoder::new(
            Vec::with_capacity(body.len() / 4),
            flate2::Compression::fast(),
        );
        // Writing into a Vec cannot fail.
        let _ = enc.write_all(body.as_bytes());
        let bytes = enc.finish().unwrap_or_default();
        let mut r = Response::new(full(bytes));
        r.headers_mut()
            .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        r
    } else {
        Response::new(full(body))
    };
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    r.headers_mut().insert(
        header::VARY,
        HeaderValue::from_static("Accept, Accept-Encoding"),
    );
    r
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_failure_has_one_status() {
        assert_eq!(ServeError::BadRequest("x".into()).status(), 400);
        assert_eq!(ServeError::NotFound.status(), 404);
        assert_eq!(ServeError::Gone.status(), 404);
        assert_eq!(ServeError::MethodNotAllowed.status(), 405);
        assert_eq!(ServeError::Timeout("t".into()).status(), 503);
        assert_eq!(ServeError::Internal("i".into()).status(), 500);
        assert_eq!(ServeError::from(CollectError::Gone).status(), 404);
        assert_eq!(
            ServeError::from(CollectError::Timeout(Duration::from_secs(1))).status(),
            503
        );
    }

    #[test]
    fn gzip_negotiation() {
        assert!(accepts_gzip(Some("gzip")));
        assert!(accepts_gzip(Some("deflate, gzip;q=0.5")));
        assert!(!accepts_gzip(Some("gzip;q=0")));
        assert!(!accepts_gzip(None));
        assert!(!accepts_gzip(Some("identity")));
    }

    #[test]
    fn watch_param() {
        assert!(has_param(Some("watch"), "watch"));
        assert!(has_param(Some("a=1&watch=true"), "watch"));
        assert!(!has_param(Some("watch=false"), "watch"));
        assert!(!has_param(Some("watcher"), "watch"));
        assert!(!has_param(None, "watch"));
    }
}
