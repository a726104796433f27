//! A real etcd (Debian's `etcd-server`, `/usr/bin/etcd`) for tests: one member on free
//! loopback ports with its own data directory. It can be stopped (killed, like a crash) and
//! started again on the same ports and data, and it is killed when dropped — also when the
//! test fails. Panics naming what is missing when etcd is not installed.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// The etcd binary (Debian's `etcd-server` package).
pub const ETCD: &str = "/usr/bin/etcd";
/// How long etcd may take to elect itself leader and answer `/health`.
const READY: Duration = Duration::from_secs(30);

/// One etcd member on loopback.
pub struct Etcd {
    dir: TempDir,
    client_port: u16,
    peer_port: u16,
    tls: Option<ServerTls>,
    child: Option<Child>,
}

/// TLS on etcd's client URL: its certificate and key, and the CA client certificates must
/// chain to (`--client-cert-auth`).
#[derive(Clone)]
pub struct ServerTls {
    /// Server certificate (PEM), valid for 127.0.0.1.
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
    /// CA of client certificates.
    pub client_ca: PathBuf,
}

impl Etcd {
    /// Starts etcd on two free loopback ports and waits until it answers `/health`.
    pub fn start() -> Etcd {
        Etcd::start_with(None)
    }

    /// Like [`Etcd::start`], with TLS and client certificates required on the client URL.
    pub fn start_tls(tls: ServerTls) -> Etcd {
        Etcd::start_with(Some(tls))
    }

    fn start_with(tls: Option<ServerTls>) -> Etcd {
        assert!(
            std::path::Path::new(ETCD).exists(),
            "{ETCD} is missing: install Debian's etcd-server (deploy/test.sh does)"
        );
        let dir = tempfile::Builder::new()
            .prefix("lookout-etcd-")
            .tempdir()
            .expect("tempdir");
        // Hold both listeners until both ports are known, so they differ.
        let a = TcpListener::bind("127.0.0.1:0").expect("bind");
        let b = TcpListener::bind("127.0.0.1:0").expect("bind");
        let client_port = a.local_addr().expect("addr").port();
        let peer_port = b.local_addr().expect("addr").port();
        drop((a, b));
        let mut etcd = Etcd {
            dir,
            client_port,
            peer_port,
            tls,
            child: None,
        };
        etcd.restart();
        etcd
    }

    /// The client URL.
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// Kills etcd (SIGKILL: no goodbye to clients) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts etcd again (after [`Etcd::stop`]) on the same ports and data directory, and
    /// waits until it answers `/health`.
    pub fn restart(&mut self) {
        self.stop();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("etcd log");
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut cmd = Command::new(ETCD);
        if let Some(tls) = &self.tls {
            cmd.arg("--cert-file")
                .arg(&tls.cert)
                .arg("--key-file")
                .arg(&tls.key)
                .arg("--trusted-ca-file")
                .arg(&tls.client_ca)
                .arg("--client-cert-auth");
        }
        let child = cmd
            .args(["--name", "default"])
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &self.endpoint()])
            .args(["--advertise-client-urls", &self.endpoint()])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("default={peer}")])
            .args(["--initial-cluster-state", "new"])
            .args(["--logger", "zap", "--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("spawn etcd");
        self.child = Some(child);
        self.wait_ready();
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY;
        loop {
            if self.healthy() {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("etcd exited with {status}:\n{}", self.log_tail());
            }
            assert!(
                Instant::now() < deadline,
                "etcd not healthy within {READY:?}:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `GET /health` answers `"health":"true"` (with TLS: the port accepts connections, and
    /// clients retry until etcd has elected itself).
    fn healthy(&self) -> bool {
        let addr = format!("127.0.0.1:{}", self.client_port);
        let Ok(mut s) =
            TcpStream::connect_timeout(&addr.parse().expect("addr"), Duration::from_millis(500))
        else {
            return false;
        };
        if self.tls.is_some() {
            return true;
        }
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let req = format!("GET /health HTTP/1.0\r\nHost: {addr}\r\n\r\n");
        if s.write_all(req.as_bytes()).is_err() {
            return false;
        }
        let mut body = String::new();
        let _ = s.read_to_string(&mut body);
        body.contains("\"health\":\"true\"")
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}
