//! A frozen agent through the proxy (needs root, `runc` and `busybox-static`; deploy/test.sh
//! installs them): `lookout agent` as a real process, stopped with SIGSTOP while the proxy
//! holds a kept-alive connection to it — an agent that accepts and never answers, as a node
//! under memory pressure does. A tenant's scrape must end in 504 at the deadline its
//! `X-Prometheus-Scrape-Timeout-Seconds` states (not at the proxy's default, not at once), and
//! at the proxy's `scrape_timeout` without the header; the proxy's watch of a frozen agent
//! is called dead after `idle_timeout` and its instances kept (the real part for what the
//! agents source's unit test fakes); once the agent runs again, the same proxy serves it.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lookout_proxy::config::ProxyConfig;
use lookout_proxy::server::Proxy;
use lookout_testkit::containers::{ContainerSpec, Runc};
use lookout_testkit::https::{Kept, Protocol};
use lookout_testkit::net::free_port;
use lookout_testkit::pki::{Pki, BASE as SUFFIX};

/// How late after its deadline an answer may come on a loaded 2-core machine.
const MARGIN: Duration = Duration::from_millis(1500);

/// The agent process, killed (and continued first, if stopped) on drop.
struct AgentProcess(Child);

impl AgentProcess {
    fn signal(&self, sig: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.0.id() as i32).expect("pid");
        rustix::process::kill_process(pid, sig).expect("signal the agent");
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.signal(rustix::process::Signal::Cont);
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_agent_is_504_at_the_scrapes_own_deadline() {
    let runc = Runc::new();
    let _web = runc.run(ContainerSpec::new("web").annotation("lookout.tenant", "acme"));
    let pki = Pki::new("lookout-frozen-");
    pki.write("tenants.toml", "[[tenant]]\nname = \"acme\"\n");
    let port = free_port();
    let agent_toml = pki.write(
        "agent.toml",
        &pki.agent_toml(runc.state_root())
            .node_id("node-a")
            .listen(&format!("127.0.0.1:{port}"))
            .render(),
    );
    let agent = AgentProcess(
        Command::new(env!("CARGO_BIN_EXE_lookout"))
            .args(["agent", "--config"])
            .arg(&agent_toml)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn lookout agent"),
    );
    // The connect deadline is longer than any scrape's: the scrape deadline must be what
    // ends the request.
    // The agents source calls a peer silent for 2 s dead (three heartbeats, 45 s, by
    // default), keeping its instances.
    let config = pki
        .proxy_toml()
        .upstream("connect_timeout = \"20s\"")
        .upstream("scrape_timeout = \"2s\"")
        .tables(&format!(
            "[inventory]\nsource = \"agents\"\nagents = [\"127.0.0.1:{port}\"]\n\
             idle_timeout = \"2s\"\nbackoff = {{ min = \"100ms\", max = \"500ms\" }}\n\
             [inventory.tls]\ncert = \"{}\"\nkey = \"{}\"\nca = \"{}\"\n",
            pki.path("proxy.pem").display(),
            pki.path("proxy-key.pem").display(),
            pki.path("operator-ca.pem").display(),
        ))
        .render();
    let proxy = Proxy::start(ProxyConfig::parse(&config).expect("proxy config"))
        .await
        .expect("proxy starts");
    let addr = proxy.local_addr();
    let client = pki.tenant_client(Some(&pki.acme));
    let web = format!("web.{SUFFIX}");
    let host = format!("{web}:{}", addr.port());
    let scrape = |headers: &'static [(&'static str, &'static str)]| {
        let (client, web, host) = (client.clone(), web.clone(), host.clone());
        async move {
            let mut c = Kept::open(&client, addr, &web, Protocol::Http1)
                .await
                .expect("connect to the proxy");
            let start = Instant::now();
            let r = c.get(&host, "/metrics", headers).await.expect("an answer");
            (r.status, start.elapsed(), r.text())
        }
    };

    // Until a scrape is served (bounded).
    let served = |what: &'static str| async move {
        let start = Instant::now();
        loop {
            let (status, _, _) = scrape(&[]).await;
            if status == 200 {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{what}: {status}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    // Served, so the proxy keeps a pooled connection to the agent.
    served("never served").await;

    agent.signal(rustix::process::Signal::Stop);
    let (status, took, body) = scrape(&[("x-prometheus-scrape-timeout-seconds", "3")]).await;
    assert_eq!(status, 504, "{body}");
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(3) + MARGIN,
        "504 after {took:?}, not at the scrape's own 3 s deadline"
    );
    let (status, took, body) = scrape(&[]).await;
    assert_eq!(status, 504, "{body}");
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(2) + MARGIN,
        "504 after {took:?}, not at scrape_timeout (2 s)"
    );

    // By now (5 s frozen) its watch stream is known dead: /readyz says so, and its
    // instances are still served by discovery (a frozen node is not an empty one).
    let base = format!("{SUFFIX}:{}", addr.port());
    let mut c = Kept::open(&client, addr, SUFFIX, Protocol::Http1)
        .await
        .expect("connect");
    let ready = c.get(&base, "/readyz", &[]).await.expect("readyz");
    assert_eq!(ready.status, 200, "{}", ready.text());
    assert!(
        ready.text().contains("source failing"),
        "a silent agent is reported: {}",
        ready.text()
    );
    let listed = c.get(&base, "/v1/discover", &[]).await.expect("discover");
    assert!(listed.text().contains("\"web\""), "{}", listed.text());

    agent.signal(rustix::process::Signal::Cont);
    served("not served again after SIGCONT").await;
    proxy.shutdown().await;
    drop(agent);
}
