//! One watch stream to one agent: connect (TCP, mTLS, HTTP/1.1) under deadlines, send
//! `GET /v1/instances?watch`, and split the NDJSON body into events and heartbeats.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;

use super::config::AgentAddr;
use crate::model::InstanceEvent;

/// Longest NDJSON line accepted (a snapshot of a very large node is one line).
pub const MAX_LINE: usize = 64 * 1024 * 1024;

/// Why a watch stream could not be opened or ended.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// TCP connect failed.
    #[error("connect: {0}")]
    Connect(std::io::Error),
    /// The server name to verify is not a DNS name or IP address.
    #[error("bad TLS server name {0:?}")]
    ServerName(String),
    /// TLS handshake failed (certificate refused either way, protocol error).
    #[error("tls: {0}")]
    Tls(std::io::Error),
    /// HTTP failure (includes a TLS alert received after the handshake, e.g. the agent
    /// refusing our client certificate under TLS 1.3).
    /// The message carries hyper's whole source chain (e.g. the TLS alert's name).
    #[error("http: {0}")]
    Http(String),
    /// A step took longer than its deadline.
    #[error("{0} timed out after {1:?}")]
    Timeout(&'static str, Duration),
    /// The agent answered, but not 200.
    #[error("agent answered HTTP {0}")]
    Status(u16),
    /// Nothing arrived, not even a heartbeat, for the idle timeout.
    #[error("no data or heartbeat for {0:?}: peer presumed dead")]
    Idle(Duration),
    /// The agent closed the stream.
    #[error("stream closed by the agent")]
    Closed,
    /// A line was not a valid event.
    #[error("bad event: {0}")]
    Decode(String),
    /// A line exceeded [`MAX_LINE`].
    #[error("event line longer than {MAX_LINE} bytes")]
    LineTooLong,
    /// The stream broke the protocol (e.g. no snapshot first).
    #[error("protocol: {0}")]
    Protocol(&'static str),
}

impl From<hyper::Error> for StreamError {
    fn from(e: hyper::Error) -> Self {
        let mut msg = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            msg.push_str(": ");
            msg.push_str(&s.to_string());
            source = s.source();
        }
        StreamError::Http(msg)
    }
}

/// An open watch stream.
pub struct WatchStream {
    body: Incoming,
    lines: LineSplitter,
    idle: Duration,
    _conn: AbortOnDrop,
}

/// What the stream delivered.
#[derive(Debug)]
pub enum Item {
    /// An event line.
    Event(Box<InstanceEvent>),
    /// A blank line (the agent's keep-alive).
    Heartbeat,
}

/// Opens `GET /v1/instances?watch` on `addr`, each step bounded by `timeout`.
pub async fn open(
    addr: &AgentAddr,
    tls: Arc<ClientConfig>,
    server_name: Option<&str>,
    timeout: Duration,
    idle: Duration,
) -> Result<WatchStream, StreamError> {
    let name = server_name.unwrap_or(&addr.host);
    let name = ServerName::try_from(name.to_string())
        .map_err(|_| StreamError::ServerName(name.to_string()))?;
    let tcp = tokio::time::timeout(
        timeout,
        tokio::net::TcpStream::connect((addr.host.as_str(), addr.port)),
    )
    .await
    .map_err(|_| StreamError::Timeout("connect", timeout))?
    .map_err(StreamError::Connect)?;
    let _ = tcp.set_nodelay(true);
    let tls = tokio::time::timeout(
        timeout,
        tokio_rustls::TlsConnector::from(tls).connect(name, tcp),
    )
    .await
    .map_err(|_| StreamError::Timeout("TLS handshake", timeout))?
    .map_err(StreamError::Tls)?;
    let (mut send, conn) = tokio::time::timeout(timeout, http1::handshake(TokioIo::new(tls)))
        .await
        .map_err(|_| StreamError::Timeout("HTTP handshake", timeout))??;
    let conn = tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "agent watch connection ended");
        }
    });
    // From here `conn` is aborted on every early return.
    let conn = AbortOnDrop(conn);
    let req = http::Request::get("/v1/instances?watch")
        .header(http::header::HOST, addr.to_string())
        .header(http::header::ACCEPT, "application/x-ndjson")
        .header(http::header::USER_AGENT, "lookout-proxy")
        .body(Empty::<Bytes>::new())
        .map_err(|_| StreamError::Protocol("cannot build the request"))?;
    let resp = tokio::time::timeout(timeout, send.send_request(req))
        .await
        .map_err(|_| StreamError::Timeout("response headers", timeout))??;
    if resp.status() != http::StatusCode::OK {
        return Err(StreamError::Status(resp.status().as_u16()));
    }
    Ok(WatchStream {
        body: resp.into_body(),
        lines: LineSplitter::default(),
        idle,
        _conn: conn,
    })
}

/// Drives the HTTP connection; stops it when the stream (or a failed open) is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl WatchStream {
    /// The next event or heartbeat; an error ends the stream.
    pub async fn next(&mut self) -> Result<Item, StreamError> {
        loop {
            if let Some(line) = self.lines.next_line()? {
                if line.iter().all(u8::is_ascii_whitespace) {
                    return Ok(Item::Heartbeat);
                }
                return serde_json::from_slice(&line)
                    .map(|e| Item::Event(Box::new(e)))
                    .map_err(|e| StreamError::Decode(e.to_string()));
            }
            let frame = tokio::time::timeout(self.idle, self.body.frame())
                .await
                .map_err(|_| StreamError::Idle(self.idle))?
                .ok_or(StreamError::Closed)??;
            if let Ok(data) = frame.into_data() {
                self.lines.push(&data);
            }
        }
    }
}

/// Splits bytes into `\n`-terminated lines without rescanning what was already searched.
#[derive(Debug, Default)]
pub struct LineSplitter {
    buf: BytesMut,
    scanned: usize,
}

impl LineSplitter {
    /// Appends received bytes.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next complete line (without its `\n`), if any; errors when a line grows past
    /// [`MAX_LINE`].
    pub fn next_line(&mut self) -> Result<Option<Bytes>, StreamError> {
        match self.buf[self.scanned..].iter().position(|b| *b == b'\n') {
            Some(pos) => {
                let line = self.buf.split_to(self.scanned + pos).freeze();
                self.buf.advance(1);
                self.scanned = 0;
                Ok(Some(line))
            }
            None => {
                self.scanned = self.buf.len();
                if self.buf.len() > MAX_LINE {
                    return Err(StreamError::LineTooLong);
                }
                Ok(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_across_frames() {
        let mut s = LineSplitter::default();
        s.push(b"{\"a\"");
        assert!(s.next_line().expect("ok").is_none());
        s.push(b":1}\n\n{\"b\":");
        assert_eq!(&s.next_line().expect("ok").expect("line")[..], b"{\"a\":1}");
        assert_eq!(&s.next_line().expect("ok").expect("line")[..], b"");
        assert!(s.next_line().expect("ok").is_none());
        s.push(b"2}\n");
        assert_eq!(&s.next_line().expect("ok").expect("line")[..], b"{\"b\":2}");
        assert!(s.next_line().expect("ok").is_none());
    }
}
