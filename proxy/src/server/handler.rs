//! One request, from headers to response. Checks run in this order, and each refusal is
//! final:
//!
//! 1. **per-source-address limit** (before anything costs more) → 429 + `Retry-After`;
//! 2. **Host/SNI route** ([`crate::host::HostRules`], SNI from the TLS session) → 400/421/404;
//! 3. **method**: only `GET` and `HEAD` → 405;
//! 4. `/_ping` (200 `OK`, no authentication), `/healthz` (200), `/readyz` (200 once the
//!    inventory was loaded, else 503 with the reason) — on any Host, answered right after
//!    the source limit (probes send the pod's address, which no rule routes);
//! 5. **authentication** ([`crate::identity::authenticate`] with the peer's chain and the
//!    `Authorization` header; cached per connection) → 401;
//! 6. **per-tenant limit** → 429 + `Retry-After`;
//! 7. **routes**. On the base name: `GET /v1/discover[?groups=]` (Triton SD, role
//!    `container`), `GET /v1/gz/discover` (role `cn`, operators), `GET /v1/sd[?groups=]`
//!    (HTTP SD of the caller's instances), `GET /v1/gz/sd` (HTTP SD of nodes, operators),
//!    `GET /v1/instances/<id>/metrics`, `GET /v1/nodes/<id>/metrics` (operators). On
//!    `<id>.<dns_suffix>`: `GET /metrics` → the caller's instance `<id>`, or node `<id>` for
//!    operators.
//!
//! **Bodies.** Every non-success body is `error: <message>\n` as `text/plain`
//! ([`lookout_discovery::sd::triton_error_body`]): never a JSON object, so a failed Triton
//! discovery never wipes a tenant's targets in Prometheus. Messages never say *why*
//! authentication failed, nor whether an instance exists: another tenant's instance and a
//! missing one get the same 404.
//!
//! **Discovery before the inventory is loaded** is 503: an empty list would be taken as
//! authoritative.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use lookout_discovery::sd::{
    http_sd, http_sd_nodes, parse_groups, triton_containers, triton_error_body, triton_nodes,
    HTTP_SD_CONTENT_TYPE, TRITON_CONTENT_TYPE, TRITON_ERROR_CONTENT_TYPE,
};
use lookout_discovery::{is_dns_label, Shared, GENERATION_HEADER, TENANT_HEADER};
use rustls_pki_types::{CertificateDer, UnixTime};

use super::bodies::{accepts_gzip, Bodies, Kind, Rendered};
use super::{ReloadingTenants, ReloadingTls};
use crate::host::{HostError, HostRules, Route};
use crate::identity::{authenticate, Identity, IdentityError, TenantCa};
use crate::limit::{RetryAfter, SourceLimiter, TenantLimiter};
use crate::refusal::{self, Refusal};
use crate::telemetry::{
    status_class, AuthLabels, RequestLabels, RouteLabels, Telemetry, ThrottleLabels, UpstreamLabels,
};
use crate::tenants::reload::Readiness;
use crate::tenants::Tenants;
use crate::upstream::{BoxError, DeadlineBody, Upstream, UpstreamError};

/// The response body: a whole small body, or an agent's body streamed through.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// How long an authentication result is reused on one connection before it is checked
/// again (so that a certificate expiring mid-connection stops working within this time).
const IDENTITY_CACHE_TTL: Duration = Duration::from_secs(30);

/// Longest scrape deadline a client may ask for.
const MAX_SCRAPE_TIMEOUT: Duration = Duration::from_secs(300);

/// Request headers passed on to agents; everything else (hop-by-hop, `Authorization`,
/// cookies, `Host`) stays here.
const FORWARDED_REQUEST_HEADERS: [HeaderName; 3] = [
    http::header::ACCEPT,
    http::header::ACCEPT_ENCODING,
    HeaderName::from_static("x-prometheus-scrape-timeout-seconds"),
];

/// Agent response headers passed on to clients.
const FORWARDED_RESPONSE_HEADERS: [HeaderName; 3] = [
    http::header::CONTENT_TYPE,
    http::header::CONTENT_ENCODING,
    http::header::VARY,
];

/// Everything requests share.
pub(crate) struct State {
    pub(crate) hosts: HostRules,
    pub(crate) tls: Arc<ReloadingTls>,
    pub(crate) tenants: Arc<ReloadingTenants>,
    pub(crate) tenant_limits: TenantLimiter,
    pub(crate) source_limits: SourceLimiter,
    pub(crate) inventory: Arc<Shared>,
    /// Discovery bodies rendered from `inventory`, reused until what they show changes.
    pub(crate) bodies: Bodies,
    pub(crate) upstream: Upstream,
    pub(crate) telemetry: Arc<Telemetry>,
    pub(crate) dns_suffix: String,
    pub(crate) sd_port: u16,
    pub(crate) scrape_timeout: Duration,
}

/// What one TLS connection tells about its peer, plus its identity cache.
pub(crate) struct Conn {
    peer: SocketAddr,
    sni: Option<String>,
    chain: Vec<CertificateDer<'static>>,
    cache: Mutex<Option<Cached>>,
}

/// One authentication result, valid for the same tenants, tenant CA and header.
struct Cached {
    tenants: Arc<Tenants>,
    ca: Arc<TenantCa>,
    authorization: Option<Vec<u8>>,
    at: Instant,
    result: Result<Identity, IdentityError>,
}

impl Conn {
    pub(crate) fn new(
        peer: SocketAddr,
        sni: Option<String>,
        chain: Vec<CertificateDer<'static>>,
    ) -> Conn {
        Conn {
            peer,
            sni,
            chain,
            cache: Mutex::new(None),
        }
    }
}

/// Route names, for metrics (a fixed set).
mod route {
    pub const DISCOVER: &str = "discover";
    pub const GZ_DISCOVER: &str = "gz_discover";
    pub const SD: &str = "sd";
    pub const GZ_SD: &str = "gz_sd";
    pub const INSTANCE: &str = "instance_metrics";
    pub const NODE: &str = "node_metrics";
    pub const PING: &str = "ping";
    pub const HEALTHZ: &str = "healthz";
    pub const READYZ: &str = "readyz";
    pub const OTHER: &str = "other";
}

/// What a request asks for, once Host and path are read.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Ping,
    Healthz,
    Readyz,
    Discover,
    GzDiscover,
    Sd,
    GzSd,
    /// `/v1/instances/<id>/metrics` on the base name.
    Instance(String),
    /// `/v1/nodes/<id>/metrics` on the base name.
    Node(String),
    /// `/metrics` on `<id>.<suffix>`: an instance, or a node for operators.
    Named(String),
    NotFound,
}

impl Target {
    fn parse(host: &Route, path: &str) -> Target {
        match path {
            "/_ping" => return Target::Ping,
            "/healthz" => return Target::Healthz,
            "/readyz" => return Target::Readyz,
            _ => {}
        }
        match host {
            Route::Instance(id) => match path {
                "/metrics" => Target::Named(id.clone()),
                _ => Target::NotFound,
            },
            Route::Base => match path {
                "/v1/discover" => Target::Discover,
                "/v1/gz/discover" => Target::GzDiscover,
                "/v1/sd" => Target::Sd,
                "/v1/gz/sd" => Target::GzSd,
                _ => {
                    if let Some(id) = id_in(path, "/v1/instances/") {
                        Target::Instance(id)
                    } else if let Some(id) = id_in(path, "/v1/nodes/") {
                        Target::Node(id)
                    } else {
                        Target::NotFound
                    }
                }
            },
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Target::Ping => route::PING,
            Target::Healthz => route::HEALTHZ,
            Target::Readyz => route::READYZ,
            Target::Discover => route::DISCOVER,
            Target::GzDiscover => route::GZ_DISCOVER,
            Target::Sd => route::SD,
            Target::GzSd => route::GZ_SD,
            Target::Instance(_) | Target::Named(_) => route::INSTANCE,
            Target::Node(_) => route::NODE,
            Target::NotFound => route::OTHER,
        }
    }
}

/// The id in `<prefix><id>/metrics`, lowercased, when it is a DNS label.
fn id_in(path: &str, prefix: &str) -> Option<String> {
    let id = path.strip_prefix(prefix)?.strip_suffix("/metrics")?;
    let id = id.to_ascii_lowercase();
    is_dns_label(&id).then_some(id)
}

/// A small whole-body response.
fn respond(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    let body = Full::new(body.into())
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    resp
}

/// A successful Triton discovery reply: gzipped when the request's `Accept-Encoding` admits
/// it (Go's client, hence Prometheus's triton SD, asks for gzip and decodes it
/// transparently), with `Vary: Accept-Encoding` either way. HTTP SD replies are never
/// compressed: Prometheus's HTTP SD client does not decode them.
fn triton_ok(body: &Rendered, headers: &HeaderMap) -> Response<Body> {
    let gzip = accepts_gzip(
        headers
            .get(http::header::ACCEPT_ENCODING)
            .and_then(|v| v.to_str().ok()),
    );
    let mut resp = if gzip {
        let mut r = respond(StatusCode::OK, TRITON_CONTENT_TYPE, body.gzip());
        r.headers_mut().insert(
            http::header::CONTENT_ENCODING,
            HeaderValue::from_static("gzip"),
        );
        r
    } else {
        respond(StatusCode::OK, TRITON_CONTENT_TYPE, body.plain())
    };
    resp.headers_mut().insert(
        http::header::VARY,
        HeaderValue::from_static("accept-encoding"),
    );
    resp
}

/// A refusal: `error: <message>\n`, `text/plain` — never a JSON object.
/// `200 text/plain` with `text`.
fn ok_text(text: &'static str) -> Response<Body> {
    respond(StatusCode::OK, "text/plain; charset=utf-8", text)
}

fn error(status: StatusCode, message: &str) -> Response<Body> {
    respond(
        status,
        TRITON_ERROR_CONTENT_TYPE,
        triton_error_body(message),
    )
}

/// The response for a [`Refusal`], via [`refusal::status`].
fn refuse(r: &Refusal) -> Response<Body> {
    let (code, retry_after) = refusal::status(r);
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let message = match r {
        Refusal::Identity(_) => "unauthorized",
        Refusal::Host(HostError::Missing) => "missing Host",
        Refusal::Host(HostError::Malformed(_)) => "malformed Host",
        Refusal::Host(HostError::Misdirected { .. }) => "TLS server name does not match Host",
        Refusal::Host(HostError::Unknown(_)) => "not found",
        Refusal::Limited(_) => "request rate exceeded",
    };
    let mut resp = error(status, message);
    if let Some(secs) = retry_after {
        resp.headers_mut()
            .insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
    }
    if matches!(r, Refusal::Identity(_)) {
        resp.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"lookout\""),
        );
    }
    resp
}

fn not_found() -> Response<Body> {
    error(StatusCode::NOT_FOUND, "not found")
}

/// The `IdentityError` variant as a metric label.
fn auth_reason(e: &IdentityError) -> &'static str {
    match e {
        IdentityError::NoCredentials => "no_credentials",
        IdentityError::MalformedCertificate(_) => "malformed_certificate",
        IdentityError::Expired => "expired",
        IdentityError::NotYetValid => "not_yet_valid",
        IdentityError::Revoked => "revoked",
        IdentityError::UnknownName(_) => "unknown_name",
        IdentityError::AmbiguousName(_) => "ambiguous_name",
        IdentityError::UnknownKey(_) => "unknown_key",
        IdentityError::MalformedAuthorization => "malformed_authorization",
        IdentityError::UnknownToken => "unknown_token",
        IdentityError::Conflict => "conflict",
    }
}

/// The scrape deadline: `X-Prometheus-Scrape-Timeout-Seconds` when it is a positive number
/// (at most [`MAX_SCRAPE_TIMEOUT`]), else `default`.
pub fn scrape_deadline(headers: &HeaderMap, default: Duration) -> Duration {
    headers
        .get("x-prometheus-scrape-timeout-seconds")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .map_or(default, |s| {
            Duration::from_secs_f64(s.min(MAX_SCRAPE_TIMEOUT.as_secs_f64()))
        })
}

/// What the client gets for what an agent did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamOutcome {
    /// Stream the agent's response through (a 2xx).
    Pass,
    /// Answer this instead.
    Fail {
        /// Status for the client.
        status: StatusCode,
        /// Message for the client's error body.
        message: &'static str,
        /// Label of `lookout_proxy_upstream_errors`.
        kind: &'static str,
    },
}

/// **The** mapping of agent answers and failures to client statuses: a 2xx streams through;
/// an agent 404 (the instance is gone) is 404; an agent 400 (the client's `collect[]` or
/// `exclude[]`) is 400; an agent 503/504 keeps its status; any other
/// agent status is 502; a node that cannot be reached is 503, one that does not answer
/// within the scrape deadline 504, and one that does not speak HTTP 502.
pub fn map_upstream(result: Result<StatusCode, &UpstreamError>) -> UpstreamOutcome {
    let fail = |status, message, kind| UpstreamOutcome::Fail {
        status,
        message,
        kind,
    };
    match result {
        Ok(s) if s.is_success() => UpstreamOutcome::Pass,
        Ok(StatusCode::NOT_FOUND) => fail(StatusCode::NOT_FOUND, "not found", "agent_status"),
        // The only query the agent reads is the client's own (`collect[]`, `exclude[]`).
        Ok(StatusCode::BAD_REQUEST) => fail(
            StatusCode::BAD_REQUEST,
            "bad request: the node agent refused the query (check collect[] and exclude[])",
            "agent_status",
        ),
        Ok(StatusCode::SERVICE_UNAVAILABLE) => fail(
            StatusCode::SERVICE_UNAVAILABLE,
            "node agent is overloaded",
            "agent_status",
        ),
        Ok(StatusCode::GATEWAY_TIMEOUT) => fail(
            StatusCode::GATEWAY_TIMEOUT,
            "node agent did not collect in time",
            "agent_status",
        ),
        Ok(_) => fail(
            StatusCode::BAD_GATEWAY,
            "node agent answered with an error",
            "agent_status",
        ),
        Err(UpstreamError::Unreachable(_)) => fail(
            StatusCode::SERVICE_UNAVAILABLE,
            "node unreachable",
            "unreachable",
        ),
        Err(UpstreamError::Timeout) => fail(
            StatusCode::GATEWAY_TIMEOUT,
            "node did not answer within the scrape timeout",
            "timeout",
        ),
        Err(UpstreamError::Protocol(_)) => fail(
            StatusCode::BAD_GATEWAY,
            "node answered something that is not HTTP",
            "protocol",
        ),
    }
}

impl State {
    /// Handles one request and records it in the metrics.
    pub(crate) async fn handle(&self, conn: &Conn, req: Request<Incoming>) -> Response<Body> {
        let start = Instant::now();
        let (route, tenant, mut resp) = self.dispatch(conn, &req).await;
        // No body for HEAD, whatever answered: hyper leaves it out on HTTP/1.1 but sends it
        // as DATA frames on HTTP/2, which clients treat as a protocol error.
        if req.method() == Method::HEAD {
            use hyper::body::Body as _;
            if let Some(n) = resp.body().size_hint().exact() {
                resp.headers_mut()
                    .entry(http::header::CONTENT_LENGTH)
                    .or_insert_with(|| HeaderValue::from(n));
            }
            *resp.body_mut() = Full::new(Bytes::new())
                .map_err(|never| match never {})
                .boxed_unsync();
        }
        let code = resp.status().as_u16();
        self.telemetry
            .requests
            .get_or_create(&RequestLabels {
                tenant: tenant.unwrap_or_else(|| "-".into()),
                route,
                code: status_class(code),
            })
            .inc();
        self.telemetry
            .request_seconds
            .get_or_create(&RouteLabels { route })
            .observe(start.elapsed().as_secs_f64());
        resp
    }

    /// The checks and routes, in the order the module documents. Returns the route name,
    /// the tenant (once authenticated) and the response.
    async fn dispatch(
        &self,
        conn: &Conn,
        req: &Request<Incoming>,
    ) -> (&'static str, Option<String>, Response<Body>) {
        if let Err(r) = self.source_limits.check(conn.peer.ip()) {
            return (route::OTHER, None, self.throttled("source", r));
        }
        // Health answers on any Host, even one this proxy does not serve: load balancers and
        // Kubernetes probes send the pod's address. They say nothing a tenant could use.
        if req.method() == Method::GET || req.method() == Method::HEAD {
            match req.uri().path() {
                "/_ping" => return (route::PING, None, ok_text("OK")),
                "/healthz" => return (route::HEALTHZ, None, ok_text("ok\n")),
                "/readyz" => return (route::READYZ, None, self.readyz()),
                _ => {}
            }
        }
        let host = match req.headers().get(http::header::HOST) {
            Some(v) => match v.to_str() {
                Ok(s) => Some(s),
                Err(_) => {
                    let r = Refusal::Host(HostError::Malformed("<not ASCII>".into()));
                    return (route::OTHER, None, refuse(&r));
                }
            },
            None => req.uri().authority().map(|a| a.as_str()),
        };
        let vhost = match self.hosts.route(host, conn.sni.as_deref()) {
            Ok(v) => v,
            Err(e) => return (route::OTHER, None, refuse(&Refusal::Host(e))),
        };
        let target = Target::parse(&vhost, req.uri().path());
        let name = target.name();
        if req.method() != Method::GET && req.method() != Method::HEAD {
            let mut resp = error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
            resp.headers_mut()
                .insert(http::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return (name, None, resp);
        }
        match target {
            Target::Ping => return (name, None, ok_text("OK")),
            Target::Healthz => return (name, None, ok_text("ok\n")),
            Target::Readyz => return (name, None, self.readyz()),
            _ => {}
        }
        let id = match self.authenticate(conn, req.headers()) {
            Ok(id) => id,
            Err(e) => {
                self.telemetry
                    .auth_failures
                    .get_or_create(&AuthLabels {
                        reason: auth_reason(&e),
                    })
                    .inc();
                tracing::debug!(peer = %conn.peer, error = %e, "authentication refused");
                return (name, None, refuse(&Refusal::Identity(e)));
            }
        };
        let tenant = Some(id.tenant.clone());
        if let Err(r) = self.tenant_limits.check(&id.tenant) {
            return (name, tenant, self.throttled("tenant", r));
        }
        let resp = self.route(&id, target, req).await;
        (name, tenant, resp)
    }

    fn throttled(&self, scope: &'static str, r: RetryAfter) -> Response<Body> {
        self.telemetry
            .throttled
            .get_or_create(&ThrottleLabels { scope })
            .inc();
        refuse(&Refusal::Limited(r))
    }

    fn readyz(&self) -> Response<Body> {
        let status = self.inventory.status();
        let text = "text/plain; charset=utf-8";
        let tenants = match self.tenants.readiness() {
            Readiness::Ready => String::new(),
            Readiness::Stale(why) => format!(" ({why})"),
            Readiness::NotReady(why) => {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("not ready: {why}"),
                )
            }
        };
        match (status.last_success, status.last_error) {
            (Some(_), None) => respond(StatusCode::OK, text, format!("ready{tenants}\n")),
            (Some(_), Some(e)) => respond(
                StatusCode::OK,
                text,
                format!("ready (serving the last inventory; source failing: {e}){tenants}\n"),
            ),
            (None, e) => error(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!(
                    "not ready: inventory not loaded yet{}",
                    e.map(|e| format!(" ({e})")).unwrap_or_default()
                ),
            ),
        }
    }

    /// Authenticates with the connection's certificate chain and this request's
    /// `Authorization` header, reusing the connection's last result when nothing changed.
    fn authenticate(&self, conn: &Conn, headers: &HeaderMap) -> Result<Identity, IdentityError> {
        let authorization = headers
            .get(http::header::AUTHORIZATION)
            .map(|v| v.as_bytes().to_vec());
        let tenants = self.tenants.current();
        let ca = Arc::clone(&self.tls.current().tenant_ca);
        let mut cache = conn.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = cache.as_ref() {
            if Arc::ptr_eq(&c.tenants, &tenants)
                && Arc::ptr_eq(&c.ca, &ca)
                && c.authorization == authorization
                && c.at.elapsed() < IDENTITY_CACHE_TTL
            {
                return c.result.clone();
            }
        }
        let result = authenticate(
            &conn.chain,
            authorization.as_deref(),
            UnixTime::now(),
            &ca,
            &tenants,
        );
        *cache = Some(Cached {
            tenants,
            ca,
            authorization,
            at: Instant::now(),
            result: result.clone(),
        });
        result
    }

    /// The authenticated routes.
    async fn route(
        &self,
        id: &Identity,
        target: Target,
        req: &Request<Incoming>,
    ) -> Response<Body> {
        let needs_inventory = !matches!(target, Target::NotFound);
        if needs_inventory && !self.inventory.ready() {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "inventory not loaded yet; try again shortly",
            );
        }
        let inv = self.inventory.load();
        let (suffix, port) = (self.dns_suffix.as_str(), self.sd_port);
        let nodes = Some(inv.node_set().stamp());
        let rendered = |route: &'static str| {
            self.telemetry
                .discovery_renders
                .get_or_create(&RouteLabels { route })
                .inc();
        };
        match target {
            Target::Discover | Target::Sd => {
                let groups = match parse_groups(req.uri().query()) {
                    Ok(g) => g,
                    Err(e) => return error(StatusCode::BAD_REQUEST, &e.to_string()),
                };
                let (tenant, groups) = (id.tenant.as_str(), groups.as_deref());
                let stamp = inv.tenant(tenant).map(|t| t.stamp());
                if target == Target::Discover {
                    let body = self.bodies.get(Kind::Triton, tenant, groups, stamp, || {
                        rendered("discover");
                        triton_containers(&inv, tenant, groups)
                    });
                    triton_ok(&body, req.headers())
                } else {
                    let body = self.bodies.get(Kind::HttpSd, tenant, groups, stamp, || {
                        rendered("sd");
                        http_sd(&inv, tenant, groups, suffix, port)
                    });
                    respond(StatusCode::OK, HTTP_SD_CONTENT_TYPE, body.plain())
                }
            }
            Target::GzDiscover if id.operator => {
                let body = self.bodies.get(Kind::TritonNodes, "", None, nodes, || {
                    rendered("gz_discover");
                    triton_nodes(&inv)
                });
                triton_ok(&body, req.headers())
            }
            Target::GzSd if id.operator => {
                let body = self.bodies.get(Kind::HttpSdNodes, "", None, nodes, || {
                    rendered("gz_sd");
                    http_sd_nodes(&inv, suffix, port)
                });
                respond(StatusCode::OK, HTTP_SD_CONTENT_TYPE, body.plain())
            }
            Target::Instance(i) => self.scrape(id, Some(&i), None, req).await,
            Target::Node(n) => self.scrape(id, None, Some(&n), req).await,
            Target::Named(x) => self.scrape(id, Some(&x), Some(&x), req).await,
            Target::GzDiscover | Target::GzSd | Target::NotFound => not_found(),
            Target::Ping | Target::Healthz | Target::Readyz => not_found(),
        }
    }

    /// A scrape of the caller's instance `instance`, or (operators) of node `node`; the
    /// instance wins when both are given and the caller owns it. Not yours and missing are
    /// the same 404.
    async fn scrape(
        &self,
        id: &Identity,
        instance: Option<&str>,
        node: Option<&str>,
        req: &Request<Incoming>,
    ) -> Response<Body> {
        let inv = self.inventory.load();
        let owned = instance.and_then(|i| inv.tenant(&id.tenant)?.get(i));
        // What the agent re-checks against the live container (see
        // `lookout_agent::authorization`): the tenant authorized here and the incarnation
        // routed to, so a stale or lied-about inventory can never serve another's container.
        let mut asserted = HeaderMap::new();
        let (node_id, path) = match (owned, node) {
            (Some(i), _) => {
                let Ok(tenant) = HeaderValue::from_str(&id.tenant) else {
                    return not_found();
                };
                asserted.insert(HeaderName::from_static(TENANT_HEADER), tenant);
                // Sources that know no generation (a static file) send none; the agent
                // then checks the tenant alone.
                match HeaderValue::from_str(&i.generation) {
                    Ok(g) if !g.is_empty() => {
                        asserted.insert(HeaderName::from_static(GENERATION_HEADER), g);
                    }
                    _ => {}
                }
                (i.node.clone(), format!("/v1/instances/{}/metrics", i.id))
            }
            (None, Some(n)) if id.operator && inv.node(n).is_some() => {
                (n.to_string(), "/v1/node/metrics".to_string())
            }
            _ => return not_found(),
        };
        let Some(agent) = inv.node(&node_id).map(|n| n.agent.clone()) else {
            self.telemetry
                .upstream_errors
                .get_or_create(&UpstreamLabels { kind: "no_agent" })
                .inc();
            return error(StatusCode::SERVICE_UNAVAILABLE, "node unreachable");
        };
        let path_and_query = match req.uri().query() {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        let mut headers = HeaderMap::new();
        for name in FORWARDED_REQUEST_HEADERS {
            for v in req.headers().get_all(&name) {
                headers.append(name.clone(), v.clone());
            }
        }
        let started = std::time::Instant::now();
        let deadline = scrape_deadline(req.headers(), self.scrape_timeout);
        let result = self
            .upstream
            .get_as(&agent, &path_and_query, &headers, asserted, deadline)
            .await;
        let outcome = map_upstream(result.as_ref().map(|r| r.status()));
        match (outcome, result) {
            // The body gets what is left of the deadline, plus a grace second: the client
            // times out first, and the proxy frees the connection soon after.
            (UpstreamOutcome::Pass, Ok(resp)) => pass_through(
                resp,
                deadline.saturating_sub(started.elapsed()) + BODY_GRACE,
            ),
            (
                UpstreamOutcome::Fail {
                    status,
                    message,
                    kind,
                },
                result,
            ) => {
                self.telemetry
                    .upstream_errors
                    .get_or_create(&UpstreamLabels { kind })
                    .inc();
                if let Err(e) = result {
                    tracing::debug!(agent = %agent, error = %e, "upstream failed");
                }
                error(status, message)
            }
            // `Pass` comes only from `Ok`.
            (UpstreamOutcome::Pass, Err(_)) => {
                error(StatusCode::BAD_GATEWAY, "node answered with an error")
            }
        }
    }
}

/// Added to the scrape deadline before an agent's body is cut off.
const BODY_GRACE: Duration = Duration::from_secs(1);

/// Streams an agent's response through, with only the headers clients may see, the body cut
/// off (as an error) when it has not ended within `budget`.
fn pass_through(resp: Response<Incoming>, budget: Duration) -> Response<Body> {
    let (parts, body) = resp.into_parts();
    let mut out = Response::new(DeadlineBody::new(body, budget).boxed_unsync());
    *out.status_mut() = parts.status;
    for name in FORWARDED_RESPONSE_HEADERS {
        for v in parts.headers.get_all(&name) {
            out.headers_mut().append(name.clone(), v.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_mapping() {
        let s = |c: u16| StatusCode::from_u16(c).expect("status");
        let status = |o: UpstreamOutcome| match o {
            UpstreamOutcome::Pass => None,
            UpstreamOutcome::Fail { status, .. } => Some(status.as_u16()),
        };
        assert_eq!(map_upstream(Ok(s(200))), UpstreamOutcome::Pass);
        assert_eq!(status(map_upstream(Ok(s(404)))), Some(404));
        assert_eq!(status(map_upstream(Ok(s(503)))), Some(503));
        assert_eq!(status(map_upstream(Ok(s(504)))), Some(504));
        assert_eq!(status(map_upstream(Ok(s(500)))), Some(502));
        assert_eq!(status(map_upstream(Ok(s(400)))), Some(400));
        assert_eq!(status(map_upstream(Ok(s(401)))), Some(502));
        let unreachable = UpstreamError::Unreachable("refused".into());
        assert_eq!(status(map_upstream(Err(&unreachable))), Some(503));
        assert_eq!(
            status(map_upstream(Err(&UpstreamError::Timeout))),
            Some(504)
        );
        let protocol = UpstreamError::Protocol("garbage".into());
        assert_eq!(status(map_upstream(Err(&protocol))), Some(502));
    }

    #[test]
    fn scrape_deadlines() {
        let d = Duration::from_secs(10);
        let mut h = HeaderMap::new();
        assert_eq!(scrape_deadline(&h, d), d);
        h.insert(
            "x-prometheus-scrape-timeout-seconds",
            HeaderValue::from_static("2.5"),
        );
        assert_eq!(scrape_deadline(&h, d), Duration::from_millis(2500));
        for bad in ["-1", "0", "NaN", "inf", "soon"] {
            h.insert(
                "x-prometheus-scrape-timeout-seconds",
                HeaderValue::from_static(bad),
            );
            assert_eq!(scrape_deadline(&h, d), d, "{bad}");
        }
        h.insert(
            "x-prometheus-scrape-timeout-seconds",
            HeaderValue::from_static("1e9"),
        );
        assert_eq!(scrape_deadline(&h, d), MAX_SCRAPE_TIMEOUT);
    }

    #[test]
    fn targets() {
        let base = Route::Base;
        let inst = Route::Instance("web-1".into());
        assert_eq!(Target::parse(&base, "/v1/discover"), Target::Discover);
        assert_eq!(
            Target::parse(&base, "/v1/instances/Web-1/metrics"),
            Target::Instance("web-1".into())
        );
        assert_eq!(
            Target::parse(&base, "/v1/instances/a.b/metrics"),
            Target::NotFound
        );
        assert_eq!(
            Target::parse(&base, "/v1/nodes/cn1/metrics"),
            Target::Node("cn1".into())
        );
        assert_eq!(
            Target::parse(&inst, "/metrics"),
            Target::Named("web-1".into())
        );
        assert_eq!(Target::parse(&inst, "/v1/discover"), Target::NotFound);
        assert_eq!(Target::parse(&inst, "/_ping"), Target::Ping);
    }
}
