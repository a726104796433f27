//! The agent's own authorization of instance scrapes, against real runc containers (needs
//! root, `runc` and `busybox-static`; deploy/test.sh installs them): an id reused by another
//! tenant is served only to the tenant that owns the container living under it now, and only
//! for the incarnation the proxy routed to — whatever a proxy's inventory still says.

#[path = "support/agent.rs"]
mod agent;

use std::time::{Duration, Instant};

use agent::{get, get_as_is, owner_of};
use lookout_agent::Agent;
use lookout_discovery::{GENERATION_HEADER, TENANT_HEADER};
use lookout_testkit::containers::{ContainerSpec, Runc};
use lookout_testkit::exposition::metric;

/// `lookout_agent_scrapes_refused_total{reason}` from the agent's own metrics.
fn refused(own: &str, reason: &str) -> f64 {
    metric(
        own,
        "lookout_agent_scrapes_refused_total",
        &[("reason", reason)],
    )
    .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_id_is_served_only_to_its_live_owner_and_incarnation() {
    let runc = Runc::new();
    let acme = runc.run(ContainerSpec::new("reuse-me").annotation("lookout.tenant", "acme"));
    let pki = agent::pki();
    let agent = Agent::start(agent::agent_config(&pki, runc.state_root(), ""))
        .await
        .expect("agent starts");
    let addr = agent.local_addr();
    let client = pki.proxy_client();
    let path = "/v1/instances/reuse-me/metrics";

    // What a proxy learned while acme owned the id.
    let acme_headers = owner_of(&client, addr, "reuse-me").await.expect("list");
    assert_eq!(acme_headers[0], (TENANT_HEADER, "acme".to_string()));
    let acme_generation = acme_headers[1].1.clone();
    assert_eq!(acme_generation.len(), 16, "a generation is published");
    let as_pairs = |h: &[(&'static str, String)]| -> Vec<(&'static str, String)> { h.to_vec() };
    let send = |headers: Vec<(&'static str, String)>| {
        let client = client.clone();
        async move {
            let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            get_as_is(&client, addr, path, &h).await.expect("answer")
        }
    };
    let ok = send(as_pairs(&acme_headers)).await;
    assert_eq!(ok.status, 200, "the owner is served: {}", ok.body);
    assert!(ok.body.contains("node_memory_MemTotal_bytes"));

    // Every way of asking for acme's container without being its proxy-authorized owner.
    for (headers, why) in [
        (vec![], "no tenant header"),
        (
            vec![(TENANT_HEADER, "globex".to_string())],
            "another tenant",
        ),
        (
            vec![(TENANT_HEADER, "ACME".to_string())],
            "another spelling",
        ),
        (
            vec![
                (TENANT_HEADER, "acme".to_string()),
                (GENERATION_HEADER, "0000000000000000".to_string()),
            ],
            "another incarnation",
        ),
    ] {
        let r = send(headers).await;
        assert_eq!(r.status, 404, "{why}: {}", r.body);
        assert!(!r.body.contains("node_"), "{why}: no metrics in the body");
    }

    // The id changes owner: acme's container goes, globex's comes under the same name.
    acme.remove();
    let _globex = runc.run(ContainerSpec::new("reuse-me").annotation("lookout.tenant", "globex"));
    let start = Instant::now();
    let globex_headers = loop {
        let h = owner_of(&client, addr, "reuse-me").await.expect("list");
        if h.first().is_some_and(|(_, t)| t == "globex") {
            break h;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the agent never saw globex's container: {h:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_ne!(
        globex_headers[1].1, acme_generation,
        "a new incarnation has a new generation"
    );

    // A proxy that still believes acme owns it (a stale inventory, a lying node) sends what
    // it knew: refused, with or without the old generation. The new owner is served.
    let stale = send(as_pairs(&acme_headers)).await;
    assert_eq!(
        stale.status, 404,
        "stale owner and generation: {}",
        stale.body
    );
    let stale_tenant = send(vec![(TENANT_HEADER, "acme".to_string())]).await;
    assert_eq!(
        stale_tenant.status, 404,
        "stale owner: {}",
        stale_tenant.body
    );
    let stale_generation = send(vec![
        (TENANT_HEADER, "globex".to_string()),
        (GENERATION_HEADER, acme_generation.clone()),
    ])
    .await;
    assert_eq!(stale_generation.status, 404, "right owner, old incarnation");
    let fresh = send(as_pairs(&globex_headers)).await;
    assert_eq!(fresh.status, 200, "the new owner is served: {}", fresh.body);

    let own = get(&client, addr, "/metrics", &[])
        .await
        .expect("own metrics");
    assert_eq!(refused(&own.body, "no_tenant"), 1.0, "{}", own.body);
    assert_eq!(refused(&own.body, "other_tenant"), 4.0, "{}", own.body);
    assert_eq!(refused(&own.body, "other_generation"), 2.0, "{}", own.body);
    agent.shutdown().await;
}
