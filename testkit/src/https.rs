//! HTTP/1.1 over TLS on loopback, as the proxy's clients and the proxy itself speak it to
//! agents: a TLS connection with an explicit server name, a kept-alive connection taking
//! requests one after another, one GET over a fresh connection, and fake TLS servers for
//! failures a real peer cannot be made to produce on demand. [`Kept`] is a kept-alive
//! connection of either protocol, HTTP/2 negotiated by ALPN, as Prometheus's clients use.
//!
//! Every wait is bounded ([`TIMEOUT`] unless the caller says otherwise); failures come back as
//! `Err` strings that start with the step that failed (`connect:`, `tls:`, `handshake:`,
//! `request:`), so refusal tests can tell where a connection was cut.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;

/// Bound on each step of a request: handshake, answer, body.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// The sending half of a kept-alive HTTP/1.1 connection.
pub type Connection = SendRequest<Empty<Bytes>>;

/// An answer, its body read to the end (or the error that cut it short).
#[derive(Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: http::HeaderMap,
    /// The body as sent (not decompressed), or why it could not be read whole.
    pub body: Result<Bytes, hyper::Error>,
}

impl Response {
    /// The body as (lossy) UTF-8 text; `<body failed: …>` when it was cut short.
    pub fn text(&self) -> String {
        match &self.body {
            Ok(b) => String::from_utf8_lossy(b).into_owned(),
            Err(e) => format!("<body failed: {e}>"),
        }
    }

    /// The body as (lossy) UTF-8 text, or `Err("body: …")` when it was cut short.
    pub fn complete_text(&self) -> Result<String, String> {
        match &self.body {
            Ok(b) => Ok(String::from_utf8_lossy(b).into_owned()),
            Err(e) => Err(format!("body: {e}")),
        }
    }
}

/// A TLS connection to `addr` for `server_name` (SNI as `client` says), the handshake bounded
/// by `within`.
pub async fn connect(
    client: &Arc<ClientConfig>,
    addr: SocketAddr,
    server_name: &str,
    within: Duration,
) -> Result<TlsStream<TcpStream>, String> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let name = ServerName::try_from(server_name.to_string()).map_err(|e| e.to_string())?;
    let handshake = tokio_rustls::TlsConnector::from(Arc::clone(client)).connect(name, tcp);
    tokio::time::timeout(within, handshake)
        .await
        .map_err(|_| "TLS handshake timed out".to_string())?
        .map_err(|e| format!("tls: {e}"))
}

/// An HTTP/1.1 connection over [`connect`], kept alive for several requests.
pub async fn open(
    client: &Arc<ClientConfig>,
    addr: SocketAddr,
    server_name: &str,
    within: Duration,
) -> Result<Connection, String> {
    let tls = connect(client, addr, server_name, within).await?;
    let (send, conn) = http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    Ok(send)
}

/// The protocol of a [`Kept`] connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 (ALPN `http/1.1`).
    Http1,
    /// HTTP/2 (ALPN `h2`; the server must agree).
    Http2,
}

/// A kept-alive connection of either protocol.
pub enum Kept {
    /// HTTP/1.1: one request at a time.
    Http1(Connection),
    /// HTTP/2.
    Http2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

impl Kept {
    /// A TLS connection for `server_name` speaking `protocol` (ALPN set on a copy of
    /// `client`; an HTTP/2 connection the server did not agree to is an error).
    pub async fn open(
        client: &ClientConfig,
        addr: SocketAddr,
        server_name: &str,
        protocol: Protocol,
    ) -> Result<Kept, String> {
        let mut cfg = client.clone();
        cfg.alpn_protocols = vec![match protocol {
            Protocol::Http1 => b"http/1.1".to_vec(),
            Protocol::Http2 => b"h2".to_vec(),
        }];
        let tls = connect(&Arc::new(cfg), addr, server_name, TIMEOUT).await?;
        match protocol {
            Protocol::Http1 => {
                let (send, conn) = http1::handshake(TokioIo::new(tls))
                    .await
                    .map_err(|e| format!("handshake: {e}"))?;
                tokio::spawn(conn);
                Ok(Kept::Http1(send))
            }
            Protocol::Http2 => {
                if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
                    return Err("handshake: the server did not agree to h2".into());
                }
                let (send, conn) = hyper::client::conn::http2::handshake(
                    hyper_util::rt::TokioExecutor::new(),
                    TokioIo::new(tls),
                )
                .await
                .map_err(|e| format!("handshake: {e}"))?;
                tokio::spawn(conn);
                Ok(Kept::Http2(send))
            }
        }
    }

    /// One GET with this Host (`:authority` on HTTP/2) and headers, its body read whole.
    pub async fn get(
        &mut self,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Response, String> {
        match self {
            Kept::Http1(send) => request(send, host, path, headers).await,
            Kept::Http2(send) => {
                let req = build(http::Request::get(format!("https://{host}{path}")), headers)?;
                ready(send.ready()).await?;
                answer(send.send_request(req)).await
            }
        }
    }
}

/// The request with `headers` added, and no body.
fn build(
    mut req: http::request::Builder,
    headers: &[(&str, &str)],
) -> Result<http::Request<Empty<Bytes>>, String> {
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.body(Empty::new()).map_err(|e| e.to_string())
}

/// Waits (bounded) for a connection to take the next request.
async fn ready(ready: impl Future<Output = Result<(), hyper::Error>>) -> Result<(), String> {
    tokio::time::timeout(TIMEOUT, ready)
        .await
        .map_err(|_| format!("connection not ready within {TIMEOUT:?}"))?
        .map_err(|e| format!("connection closed: {e}"))
}

/// The answer to a sent request, its body read whole (each step bounded).
async fn answer(
    sent: impl Future<Output = Result<http::Response<hyper::body::Incoming>, hyper::Error>>,
) -> Result<Response, String> {
    let resp = tokio::time::timeout(TIMEOUT, sent)
        .await
        .map_err(|_| "timeout".to_string())?
        .map_err(|e| format!("request: {e}"))?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = tokio::time::timeout(TIMEOUT, resp.into_body().collect())
        .await
        .map_err(|_| format!("body not finished within {TIMEOUT:?}"))?
        .map(|b| b.to_bytes());
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// One GET on `send` with this Host header; waits for the connection to have finished its
/// last request first.
pub async fn request(
    send: &mut Connection,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Response, String> {
    let req = build(http::Request::get(path).header("host", host), headers)?;
    ready(send.ready()).await?;
    answer(send.send_request(req)).await
}

/// One GET over a fresh connection: TLS for `server_name`, then `Host: host`.
pub async fn get(
    client: &Arc<ClientConfig>,
    addr: SocketAddr,
    server_name: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Response, String> {
    let mut send = open(client, addr, server_name, TIMEOUT).await?;
    request(&mut send, host, path, headers).await
}

/// Reads one request head (up to the blank line); false at EOF or on an error.
pub async fn read_head<S: AsyncRead + Unpin>(s: &mut S) -> bool {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte).await {
            Ok(1) => buf.push(byte[0]),
            _ => return false,
        }
    }
    true
}

/// A fake TLS server on 127.0.0.1: `serve(n, stream)` handles the `n`-th accepted connection
/// (counted from 0, failed handshakes included) on a task of its own. It runs until the
/// test's runtime ends.
pub async fn serve_tls<F, Fut>(acceptor: tokio_rustls::TlsAcceptor, serve: F) -> SocketAddr
where
    F: Fn(usize, tokio_rustls::server::TlsStream<TcpStream>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let count = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let n = count.fetch_add(1, Ordering::SeqCst);
            let Ok(tls) = acceptor.accept(tcp).await else {
                continue;
            };
            tokio::spawn(serve(n, tls));
        }
    });
    addr
}
