//! Test support for talking to a real agent: its configuration pointing at a test's runc
//! state root, and an mTLS client that decodes gzip and reads the watch stream. The PKI, TLS
//! and exposition helpers are `lookout_testkit`'s.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use lookout_agent::config::AgentConfig;
use lookout_discovery::{GENERATION_HEADER, TENANT_HEADER};
use lookout_testkit::https;
use lookout_testkit::pki::Pki;
use rustls::ClientConfig;

/// A throw-away PKI (`lookout_testkit::pki::Pki`) in a temp dir named `lookout-pki-*`, with a
/// second agent certificate from the same CA (`agent2.pem`, `agent2-key.pem`) for reload
/// tests.
pub fn pki() -> Pki {
    let pki = Pki::new("lookout-pki-");
    pki.write_issued("agent2", &pki.issue_agent("agent-renewed"));
    pki
}

/// The tenant [`agent_config`] gives containers without a tenant label.
pub const TEST_TENANT: &str = "test-tenant";

/// An agent configuration for tests: loopback, port 0, the test's runc root only, no
/// cgroup rules, unlabelled containers owned by [`TEST_TENANT`]. The periodic rescan is an
/// hour away, so containers that come and go in a test are noticed through inotify (or a
/// scrape that finds them gone), never by polling.
pub fn agent_config(pki: &Pki, runc_root: &Path, extra: &str) -> AgentConfig {
    let text = pki
        .agent_toml(runc_root)
        .tls_reload("200ms")
        .rescan("1h")
        .extra(&format!(
            "[labels]\ndefault_tenant = \"{TEST_TENANT}\"\n{extra}"
        ))
        .render();
    let cfg = AgentConfig::parse(&text).expect("test config parses");
    let problems = cfg.problems();
    assert!(problems.is_empty(), "test config problems: {problems:?}");
    cfg
}

/// A response, body decoded from gzip when it was compressed.
#[derive(Debug)]
pub struct Resp {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: http::HeaderMap,
    /// Body as text (gunzipped).
    pub body: String,
    /// Body size on the wire.
    pub wire_len: usize,
}

/// One GET over a fresh mTLS connection to `localhost`. For an instance's view, unless the
/// caller names a tenant itself, it does what a proxy does: looks the instance up in the
/// agent's list and sends its tenant and generation
/// ([`lookout_discovery::TENANT_HEADER`], [`lookout_discovery::GENERATION_HEADER`]).
pub async fn get(
    client: &Arc<ClientConfig>,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Resp, String> {
    let asserted = match instance_in(path) {
        Some(id) if !headers.iter().any(|(k, _)| *k == TENANT_HEADER) => {
            owner_of(client, addr, id).await?
        }
        _ => Vec::new(),
    };
    let mut all: Vec<(&str, &str)> = headers.to_vec();
    all.extend(asserted.iter().map(|(k, v)| (*k, v.as_str())));
    get_as_is(client, addr, path, &all).await
}

/// The instance id of a `/v1/instances/<id>/metrics[?…]` path.
fn instance_in(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/v1/instances/")?;
    let (id, tail) = rest.split_once('/')?;
    (tail == "metrics" || tail.starts_with("metrics?")).then_some(id)
}

/// The tenant and generation headers a proxy would send for `id`, from the agent's list
/// (none for an instance that is not listed or has no owner).
pub async fn owner_of(
    client: &Arc<ClientConfig>,
    addr: SocketAddr,
    id: &str,
) -> Result<Vec<(&'static str, String)>, String> {
    let list = get_as_is(client, addr, "/v1/instances", &[]).await?;
    let list: Vec<lookout_discovery::Instance> =
        serde_json::from_str(&list.body).map_err(|e| format!("list: {e}"))?;
    Ok(match list.into_iter().find(|i| i.id == id) {
        Some(i) => i
            .tenant
            .map(|t| (TENANT_HEADER, t))
            .into_iter()
            .chain(Some((GENERATION_HEADER, i.generation)))
            .collect(),
        None => Vec::new(),
    })
}

/// One GET with exactly these headers.
pub async fn get_as_is(
    client: &Arc<ClientConfig>,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Resp, String> {
    let r = https::get(client, addr, "localhost", "localhost", path, headers).await?;
    let bytes = r.body.map_err(|e| format!("body: {e}"))?;
    let wire_len = bytes.len();
    let body = if r
        .headers
        .get("content-encoding")
        .is_some_and(|v| v == "gzip")
    {
        use std::io::Read;
        let mut s = String::new();
        flate2::read::GzDecoder::new(&bytes[..])
            .read_to_string(&mut s)
            .map_err(|e| format!("gunzip: {e}"))?;
        s
    } else {
        String::from_utf8(bytes.to_vec()).map_err(|e| format!("utf8: {e}"))?
    };
    Ok(Resp {
        status: r.status,
        headers: r.headers,
        body,
        wire_len,
    })
}

/// The DER of the certificate the agent presents on a new connection.
pub async fn peer_certificate(client: &Arc<ClientConfig>, addr: SocketAddr) -> Vec<u8> {
    let tls = https::connect(client, addr, "localhost", https::TIMEOUT)
        .await
        .expect("tls");
    tls.get_ref().1.peer_certificates().expect("peer certs")[0].to_vec()
}

/// A `GET /v1/instances?watch` stream, read line by line.
pub struct WatchStream {
    body: hyper::body::Incoming,
    buf: Vec<u8>,
}

impl WatchStream {
    /// Opens the stream.
    pub async fn open(client: &Arc<ClientConfig>, addr: SocketAddr) -> WatchStream {
        let mut send = https::open(client, addr, "localhost", https::TIMEOUT)
            .await
            .expect("connect");
        let req = http::Request::get("/v1/instances?watch")
            .header("host", "localhost")
            .body(Empty::<Bytes>::new())
            .expect("request");
        let resp = send.send_request(req).await.expect("watch request");
        assert_eq!(resp.status(), 200);
        WatchStream {
            body: resp.into_body(),
            buf: Vec::new(),
        }
    }

    /// The next non-empty line as JSON, within 10 s.
    pub async fn next_event(&mut self) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return serde_json::from_slice(&line).expect("event JSON");
            }
            let frame = tokio::time::timeout_at(deadline, self.body.frame())
                .await
                .expect("watch event within 10 s")
                .expect("stream open")
                .expect("frame");
            if let Ok(data) = frame.into_data() {
                self.buf.extend_from_slice(&data);
            }
        }
    }
}
