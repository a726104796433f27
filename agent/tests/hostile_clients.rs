//! Nothing a client sends can crash or stall the agent: garbage instead of TLS, garbage
//! instead of HTTP, oversized headers, clients that never finish their handshake, more
//! connections than allowed, hostile paths. After each, the agent still serves.

#[path = "support/agent.rs"]
mod agent;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent::get;
use lookout_agent::Agent;
use lookout_testkit::pki::Pki;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn healthy(client: &Arc<rustls::ClientConfig>, addr: SocketAddr) {
    let r = get(client, addr, "/healthz", &[])
        .await
        .expect("agent still serves");
    assert_eq!(r.status, 200);
}

/// Reads until the peer closes; true if it closed within `limit`.
fn closed_within(mut s: TcpStream, limit: Duration) -> bool {
    s.set_read_timeout(Some(limit)).expect("timeout");
    let mut buf = [0u8; 4096];
    let start = Instant::now();
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
        if start.elapsed() > limit {
            return false;
        }
    }
}

async fn start(extra: &str) -> (Agent, Pki, tempfile::TempDir) {
    let pki = agent::pki();
    let empty_root = tempfile::tempdir().expect("tempdir");
    let cfg = agent::agent_config(&pki, empty_root.path(), extra);
    (
        Agent::start(cfg).await.expect("agent starts"),
        pki,
        empty_root,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_oversized_requests_are_refused_and_forgotten() {
    let (agent, pki, _root) = start("").await;
    let addr = agent.local_addr();
    let client = pki.proxy_client();

    // Not TLS at all.
    let mut s = TcpStream::connect(addr).expect("connect");
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n\x00\xff\xfe garbage")
        .expect("write");
    assert!(
        closed_within(s, Duration::from_secs(5)),
        "plaintext must be dropped"
    );
    healthy(&client, addr).await;

    // TLS, then not HTTP.
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut tls = tokio_rustls::TlsConnector::from(client.clone())
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("tls");
    tls.write_all(b"\x16\x03\x01 NOT HTTP \r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut answer)).await;
    assert!(
        answer.is_empty() || answer.starts_with(b"HTTP/1.1 400"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    healthy(&client, addr).await;

    // Oversized headers (over 64 KiB).
    let big = "x".repeat(100 * 1024);
    let r = get(&client, addr, "/healthz", &[("x-filler", &big)]).await;
    assert!(
        r.as_ref()
            .map_or(true, |r| r.status == 431 || r.status == 400),
        "oversized headers must be refused: {:?}",
        r.map(|r| r.status)
    );
    healthy(&client, addr).await;

    // Hostile paths and queries.
    for (path, status) in [
        ("/v1/instances/..%2F..%2Fetc%2Fpasswd/metrics", 400),
        ("/v1/instances/%00/metrics", 400),
        ("/v1/instances/a/metrics?collect[]=%00", 400),
        ("/v1/instances//metrics", 400),
        ("/v1/instances/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa/metrics", 400),
        ("/v1/instances/ok-but-unknown/metrics", 404),
        ("/v1/../../etc/passwd", 404),
    ] {
        let r = get(&client, addr, path, &[]).await.expect("request");
        assert_eq!(r.status, status, "{path}: {}", r.body);
    }
    healthy(&client, addr).await;
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_clients_are_cut_off_and_the_connection_cap_holds() {
    let (agent, pki, _root) = start("[collection]\nmax_connections = 3\n").await;
    let addr = agent.local_addr();
    let client = pki.proxy_client();

    // Three clients connect and never start TLS: they hold every slot...
    let idle: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(addr).expect("connect"))
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // ...so a fourth is closed at once, without a handshake.
    let fourth = TcpStream::connect(addr).expect("connect");
    assert!(
        closed_within(fourth, Duration::from_secs(2)),
        "over the cap must be closed"
    );
    // The stalled ones are cut off by the handshake deadline (10 s), freeing the slots.
    let start = Instant::now();
    for s in idle {
        assert!(
            closed_within(s, Duration::from_secs(15)),
            "stalled client not cut off"
        );
    }
    assert!(start.elapsed() < Duration::from_secs(14));
    healthy(&client, addr).await;
    agent.shutdown().await;
}
