//! Test support for talking to a real agent: a throw-away PKI (operator CA, agent server
//! certificate, proxy client certificate, and a foreign CA for refusals), an agent
//! configuration pointing at a test's runc state root, and a small mTLS HTTP client.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use lookout_agent::config::AgentConfig;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use tempfile::TempDir;

/// A throw-away PKI written to a temp dir.
pub struct Pki {
    /// Holds the files.
    pub dir: TempDir,
}

struct Issued {
    cert_pem: String,
    key_pem: String,
}

fn ca(cn: &str) -> (rcgen::Certificate, KeyPair) {
    let key = KeyPair::generate().expect("key generation");
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, cn);
    let cert = p.self_signed(&key).expect("self-sign CA");
    (cert, key)
}

fn issue(ca: &rcgen::Certificate, ca_key: &KeyPair, cn: &str, server: bool) -> Issued {
    let key = KeyPair::generate().expect("key generation");
    let mut p = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
    p.subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().expect("ip")));
    p.distinguished_name.push(DnType::CommonName, cn);
    p.extended_key_usages = vec![if server {
        ExtendedKeyUsagePurpose::ServerAuth
    } else {
        ExtendedKeyUsagePurpose::ClientAuth
    }];
    let cert = p.signed_by(&key, ca, ca_key).expect("sign");
    Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

impl Pki {
    /// Operator CA, agent certificate, proxy client certificate, and a foreign CA with a
    /// client certificate of its own.
    pub fn new() -> Pki {
        let dir = tempfile::Builder::new()
            .prefix("lookout-pki-")
            .tempdir()
            .expect("tempdir");
        let (ca_cert, ca_key) = ca("lookout operator CA");
        let agent = issue(&ca_cert, &ca_key, "agent", true);
        let proxy = issue(&ca_cert, &ca_key, "proxy", false);
        let (foreign_ca, foreign_key) = ca("someone else's CA");
        let foreign = issue(&foreign_ca, &foreign_key, "intruder", false);
        let w = |name: &str, text: &str| {
            std::fs::write(dir.path().join(name), text).expect("write pem")
        };
        w("ca.pem", &ca_cert.pem());
        w("agent.pem", &agent.cert_pem);
        w("agent-key.pem", &agent.key_pem);
        w("proxy.pem", &proxy.cert_pem);
        w("proxy-key.pem", &proxy.key_pem);
        w("foreign.pem", &foreign.cert_pem);
        w("foreign-key.pem", &foreign.key_pem);
        // A second agent certificate from the same CA, for reload tests.
        let agent2 = issue(&ca_cert, &ca_key, "agent-renewed", true);
        w("agent2.pem", &agent2.cert_pem);
        w("agent2-key.pem", &agent2.key_pem);
        Pki { dir }
    }

    /// Path of a file of this PKI.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A client configuration trusting the operator CA and presenting `cert`/`key` (or no
    /// client certificate when `None`).
    pub fn client(&self, identity: Option<(&str, &str)>) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(self.path("ca.pem")).expect("ca") {
            roots.add(c.expect("ca cert")).expect("add ca");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots);
        let cfg = match identity {
            Some((cert, key)) => {
                let certs = CertificateDer::pem_file_iter(self.path(cert))
                    .expect("cert")
                    .collect::<Result<Vec<_>, _>>()
                    .expect("certs");
                let key = PrivateKeyDer::from_pem_file(self.path(key)).expect("key");
                builder
                    .with_client_auth_cert(certs, key)
                    .expect("client auth")
            }
            None => builder.with_no_client_auth(),
        };
        Arc::new(cfg)
    }

    /// The proxy's client configuration.
    pub fn proxy_client(&self) -> Arc<ClientConfig> {
        self.client(Some(("proxy.pem", "proxy-key.pem")))
    }
}

/// An agent configuration for tests: loopback, port 0, the test's runc root only, no
/// cgroup rules. The periodic rescan is an hour away, so containers that come and go in a
/// test are noticed through inotify (or a scrape that finds them gone), never by polling.
pub fn agent_config(pki: &Pki, runc_root: &Path, extra: &str) -> AgentConfig {
    let text = format!(
        r#"node_id = "test-node"
listen = "127.0.0.1:0"
[tls]
cert = "{cert}"
key = "{key}"
client_ca = "{ca}"
reload_interval = "200ms"
[discovery]
runc_roots = ["{root}"]
crun_roots = []
default_cgroup_rules = false
rescan_interval = "1h"
{extra}
"#,
        cert = pki.path("agent.pem").display(),
        key = pki.path("agent-key.pem").display(),
        ca = pki.path("ca.pem").display(),
        root = runc_root.display(),
    );
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

/// One GET over a fresh mTLS connection.
pub async fn get(
    client: &Arc<ClientConfig>,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Resp, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let tls = tokio_rustls::TlsConnector::from(Arc::clone(client))
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .map_err(|e| format!("tls: {e}"))?;
    let (mut send, conn) = http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    let mut req = http::Request::get(path).header("host", "localhost");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Empty::<Bytes>::new()).expect("request");
    let resp = tokio::time::timeout(Duration::from_secs(30), send.send_request(req))
        .await
        .map_err(|_| "timeout".to_string())?
        .map_err(|e| format!("request: {e}"))?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    let wire_len = bytes.len();
    let body = if headers.get("content-encoding").is_some_and(|v| v == "gzip") {
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
        status,
        headers,
        body,
        wire_len,
    })
}

/// The value of the sample `name{labels…}` in exposition text, if present. Labels not
/// named are ignored.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples(text, name)
        .into_iter()
        .find(|(ls, _)| {
            labels
                .iter()
                .all(|(k, v)| ls.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|(_, v)| v)
}

/// Every sample of `name`: its labels and value.
pub fn samples(text: &str, name: &str) -> Vec<(Vec<(String, String)>, f64)> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (labels, value) = if let Some(r) = rest.strip_prefix('{') {
            let Some((l, v)) = r.split_once("} ") else {
                continue;
            };
            (l, v)
        } else if let Some(v) = rest.strip_prefix(' ') {
            ("", v)
        } else {
            continue;
        };
        let labels = labels
            .split("\",")
            .filter(|p| !p.is_empty())
            .filter_map(|p| {
                let (k, v) = p.split_once("=\"")?;
                Some((k.to_string(), v.trim_end_matches('"').to_string()))
            })
            .collect();
        let Ok(v) = value.trim().parse::<f64>() else {
            continue;
        };
        out.push((labels, v));
    }
    out
}

/// Pipes exposition text through `promtool check metrics`; panics with its output on errors.
pub fn promtool_check(text: &str) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool missing: install Debian's `prometheus` package (deploy/test.sh does)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool ran");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() || !report.contains("error"),
        "promtool check metrics failed:\n{report}"
    );
    report
}

/// The DER of the certificate the agent presents on a new connection.
pub async fn peer_certificate(client: &Arc<ClientConfig>, addr: SocketAddr) -> Vec<u8> {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let tls = tokio_rustls::TlsConnector::from(Arc::clone(client))
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
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
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let tls = tokio_rustls::TlsConnector::from(Arc::clone(client))
            .connect(ServerName::try_from("localhost").expect("name"), tcp)
            .await
            .expect("tls");
        let (mut send, conn) = http1::handshake(TokioIo::new(tls))
            .await
            .expect("handshake");
        tokio::spawn(conn);
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
