//! Loopback ports for servers a test starts as child processes (which cannot be handed a
//! bound socket) and for "nothing listens here".
//!
//! A port probed free can be taken before the child binds it; callers that can retry do.

use std::net::{SocketAddr, TcpListener, UdpSocket};

/// A TCP port on 127.0.0.1 that was free when probed (bound, then released).
pub fn free_port() -> u16 {
    closed_port().port()
}

/// A port on 127.0.0.1 free for both UDP and TCP when probed (for a DNS server).
pub fn free_udp_and_tcp_port() -> u16 {
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
        let port = udp.local_addr().expect("udp addr").port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// An address on 127.0.0.1 where nothing listens: connections to it are refused.
pub fn closed_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
}
