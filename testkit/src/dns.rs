//! A real DNS server for tests: Debian's dnsmasq (package `dnsmasq-base`, installed by
//! deploy/test.sh), started on 127.0.0.1 with a free port and killed when dropped (even when
//! the test fails). It fails loudly when dnsmasq is missing.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::net::free_udp_and_tcp_port;

const DNSMASQ: &str = "/usr/sbin/dnsmasq";
/// Bound on dnsmasq's start.
const WAIT: Duration = Duration::from_secs(10);

/// A dnsmasq serving `--host-record`/`--srv-host` records from its command line and A/AAAA
/// records from a hosts file it re-reads on SIGHUP. Killed on drop.
pub struct Dnsmasq {
    child: Child,
    addr: SocketAddr,
    hosts: PathBuf,
    _dir: TempDir,
}

impl Dnsmasq {
    /// Starts dnsmasq with `hosts` as its hosts file and `args` added; waits until it listens.
    pub fn start(hosts: &str, args: &[&str]) -> Dnsmasq {
        assert!(
            Path::new(DNSMASQ).exists(),
            "{DNSMASQ} is missing: install the Debian package dnsmasq-base (deploy/test.sh does)"
        );
        let dir = tempfile::Builder::new()
            .prefix("lookout-dns-")
            .tempdir()
            .expect("tempdir");
        let hosts_path = dir.path().join("hosts");
        std::fs::write(&hosts_path, hosts).expect("write hosts");
        let mut last_error = String::new();
        // A free port can be taken between probing and dnsmasq binding it: try a few.
        for _ in 0..5 {
            let port = free_udp_and_tcp_port();
            let mut child = Command::new(DNSMASQ)
                .args([
                    "--no-resolv",
                    "--no-hosts",
                    "--conf-file=/dev/null",
                    "--keep-in-foreground",
                    "--bind-interfaces",
                    "--listen-address=127.0.0.1",
                    "--pid-file",
                    // Stay root when run as root: `nobody` could not re-read the hosts file in
                    // this private directory on SIGHUP. Ignored when not root.
                    "--user=root",
                    "--log-facility=-",
                ])
                .arg(format!("--port={port}"))
                .arg(format!("--addn-hosts={}", hosts_path.display()))
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {DNSMASQ}: {e}"));
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let deadline = Instant::now() + WAIT;
            loop {
                if let Some(status) = child.try_wait().expect("dnsmasq status") {
                    let mut err = String::new();
                    if let Some(mut e) = child.stderr.take() {
                        let _ = std::io::Read::read_to_string(&mut e, &mut err);
                    }
                    last_error = format!("dnsmasq exited ({status}): {err}");
                    break;
                }
                // dnsmasq binds UDP and TCP before it serves; TCP accepting is the signal.
                if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
                    return Dnsmasq {
                        child,
                        addr,
                        hosts: hosts_path,
                        _dir: dir,
                    };
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("dnsmasq did not listen on {addr} within {WAIT:?}");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("dnsmasq would not start: {last_error}");
    }

    /// Where it answers (UDP and TCP).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Replaces the hosts file and makes dnsmasq re-read it (SIGHUP).
    pub fn set_hosts(&self, hosts: &str) {
        std::fs::write(&self.hosts, hosts).expect("write hosts");
        let status = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -HUP dnsmasq: {status}");
    }

    /// Kills dnsmasq: from now on nothing answers at its address.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        self.stop();
    }
}
