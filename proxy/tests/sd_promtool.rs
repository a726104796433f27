//! Prometheus's own service-discovery code against a real proxy: `promtool check
//! service-discovery` (Debian's `prometheus` 2.42, installed by deploy/test.sh) reads the
//! proxy's Triton SD and HTTP SD with a tenant's certificate — the statuses, content types,
//! gzip and bodies the real server sends, not a stand-in's — and gets the same targets and
//! `__meta_triton_*` labels from both; and the proxy's 401 body makes the Triton refresh
//! fail (so a running Prometheus keeps its last targets) instead of reading as "no targets".

use lookout_proxy::config::ProxyConfig;
use lookout_proxy::server::Proxy;
use lookout_testkit::pki::{Pki, BASE};
use lookout_testkit::prometheus::{check_service_discovery, triton_labels};

const INVENTORY: &str = r#"
[[nodes]]
id = "cn1"
agent = "127.0.0.1:1"
[[instances]]
id = "web-1"
node = "cn1"
tenant = "acme"
alias = "web01"
groups = ["web", "frontend"]
image = "nginx:1.25"
[[instances]]
id = "db-1"
node = "cn1"
tenant = "acme"
groups = ["db"]
[[instances]]
id = "cache-1"
node = "cn1"
tenant = "acme"
groups = ["cache"]
[[instances]]
id = "g-1"
node = "cn1"
tenant = "globex"
groups = ["db"]
"#;

async fn proxy(pki: &Pki) -> Proxy {
    pki.write(
        "tenants.toml",
        "[[tenant]]\nname = \"acme\"\n[[tenant]]\nname = \"globex\"\n",
    );
    pki.write("inventory.toml", INVENTORY);
    let config = pki
        .proxy_toml()
        // promtool dials the address it is given: that address is the discovery host.
        .top("ip_literals_are_base = true")
        .tables(&format!(
            "[inventory]\nsource = \"file\"\npath = \"{}\"\n",
            pki.path("inventory.toml").display()
        ))
        .render();
    Proxy::start(ProxyConfig::parse(&config).expect("proxy config"))
        .await
        .expect("proxy starts")
}

/// The TLS settings of a tenant's Prometheus (`cert`: its certificate's file stem).
fn tls(pki: &Pki, cert: Option<&str>) -> String {
    let ca = pki.path("server-ca.pem");
    match cert {
        Some(stem) => format!(
            "{{ca_file: {}, cert_file: {}, key_file: {}}}",
            ca.display(),
            pki.path(&format!("{stem}.pem")).display(),
            pki.path(&format!("{stem}-key.pem")).display()
        ),
        None => format!("{{ca_file: {}}}", ca.display()),
    }
}

fn triton_config(pki: &Pki, port: u16, cert: Option<&str>) -> String {
    format!(
        "scrape_configs:\n  - job_name: triton\n    scheme: https\n    triton_sd_configs:\n\
         \x20     - account: acme\n        role: container\n        endpoint: 127.0.0.1\n\
         \x20       dns_suffix: {BASE}\n        port: {port}\n\
         \x20       groups: [db, frontend]\n        tls_config: {}\n",
        tls(pki, cert)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_reads_the_real_proxys_triton_and_http_sd_alike() {
    let pki = Pki::new("lookout-sd-promtool-");
    let proxy = proxy(&pki).await;
    let port = proxy.local_addr().port();

    let config = triton_config(&pki, port, Some("acme"));
    let (targets, log) =
        tokio::task::spawn_blocking(move || check_service_discovery(&config, "triton"))
            .await
            .expect("promtool");
    let triton = triton_labels(&targets);
    let config = format!(
        "scrape_configs:\n  - job_name: sd\n    scheme: https\n    http_sd_configs:\n\
         \x20     - url: https://127.0.0.1:{port}/v1/sd?groups=db,frontend\n\
         \x20       tls_config: {}\n",
        tls(&pki, Some("acme"))
    );
    let (targets, http_log) =
        tokio::task::spawn_blocking(move || check_service_discovery(&config, "sd"))
            .await
            .expect("promtool");
    let http = triton_labels(&targets);

    // acme's instances in db or frontend, none of globex's, by `<id>.<suffix>`.
    let hosts: Vec<Option<&str>> = triton.iter().map(|(a, _)| a.split(':').next()).collect();
    assert_eq!(
        hosts,
        [
            Some(format!("db-1.{BASE}").as_str()),
            Some(format!("web-1.{BASE}").as_str())
        ],
        "{log}"
    );
    let meta = |v: &[(String, Vec<(String, String)>)]| {
        v.iter().map(|(_, m)| m.clone()).collect::<Vec<_>>()
    };
    assert_eq!(meta(&triton), meta(&http), "{log}\n{http_log}");
    let web = &triton[1].1;
    assert!(web.contains(&("__meta_triton_groups".into(), ",web,frontend,".into())));
    assert!(web.contains(&("__meta_triton_machine_image".into(), "nginx:1.25".into())));
    assert!(web.contains(&("__meta_triton_machine_alias".into(), "web01".into())));
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_proxys_401_fails_the_triton_refresh() {
    let pki = Pki::new("lookout-sd-promtool-");
    let proxy = proxy(&pki).await;
    let config = triton_config(&pki, proxy.local_addr().port(), None);
    let (targets, log) =
        tokio::task::spawn_blocking(move || check_service_discovery(&config, "triton"))
            .await
            .expect("promtool");
    assert!(targets.is_empty(), "{targets:?}");
    // The refresh fails (Prometheus keeps the last good targets): the body is no JSON.
    assert!(
        log.contains("an error occurred unmarshaling the discovery response json"),
        "{log}"
    );
    proxy.shutdown().await;
}
