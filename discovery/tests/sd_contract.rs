//! The discovery bodies against the Prometheus 2.42 wire contract
//! (`reference/prometheus-discovery.md` §1.3–1.5 for Triton SD, §3.3 for HTTP SD, §2.3 for
//! the `groups` grammar). Bodies are parsed back with serde_json and checked key by key.

use std::collections::BTreeMap;

use lookout_discovery::sd::{
    self, http_sd, http_sd_nodes, parse_groups, triton_containers, triton_error_body, triton_nodes,
    SdError, HTTP_SD_CONTENT_TYPE,
};
use lookout_discovery::{Instance, Inventory, Node};
use serde_json::Value;

fn instance(id: &str, tenant: Option<&str>, groups: &[&str], image: Option<&str>) -> Instance {
    Instance {
        id: id.into(),
        runtime_id: format!("runtime-{id}"),
        generation: String::new(),
        node: "cn1".into(),
        tenant: tenant.map(str::to_string),
        alias: format!("{id}-alias"),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        image: image.map(str::to_string),
        source: "runc".into(),
        labels: BTreeMap::new(),
    }
}

/// acme owns web-1 (web, frontend), db-1 (db) and batch-1 (no groups, no image);
/// globex owns web-9 (web); orphan-1 has no tenant.
fn fleet() -> Inventory {
    let mut inv = Inventory::default();
    for (id, hostname) in [("cn1", "cn1.dc1"), ("cn2", "")] {
        inv.insert_node(Node {
            id: id.into(),
            agent: format!("{id}:9164"),
            hostname: hostname.into(),
        });
    }
    let mut db = instance("db-1", Some("acme"), &["db"], Some("postgres:16"));
    db.node = "cn2".into();
    for i in [
        instance(
            "web-1",
            Some("acme"),
            &["web", "frontend"],
            Some("nginx:1.25"),
        ),
        db,
        instance("batch-1", Some("acme"), &[], None),
        instance("web-9", Some("globex"), &["web"], Some("nginx:1.25")),
        instance("orphan-1", None, &["web"], None),
    ] {
        inv.insert_instance(i);
    }
    inv
}

fn json(body: &[u8]) -> Value {
    serde_json::from_slice(body).expect("body is JSON")
}

fn groups(list: &[&str]) -> Vec<String> {
    list.iter().map(|g| g.to_string()).collect()
}

fn containers(body: &[u8]) -> Vec<Value> {
    let v = json(body);
    let obj = v.as_object().expect("an object");
    assert_eq!(obj.keys().collect::<Vec<_>>(), ["containers"]);
    obj["containers"]
        .as_array()
        .expect("containers is an array")
        .clone()
}

fn sorted_keys(obj: &serde_json::Map<String, Value>) -> Vec<&str> {
    let mut keys: Vec<_> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    keys
}

fn ids(entries: &[Value], key: &str) -> Vec<String> {
    entries
        .iter()
        .map(|e| e[key].as_str().expect("a string id").to_string())
        .collect()
}

// ---- Triton SD, role container ------------------------------------------------------------

#[test]
fn triton_containers_have_the_exact_shape() {
    let body = triton_containers(&fleet(), "acme", None);
    let list = containers(&body);
    assert_eq!(ids(&list, "vm_uuid"), ["batch-1", "db-1", "web-1"]);
    let web = list[2].as_object().expect("an object");
    assert_eq!(
        sorted_keys(web),
        [
            "groups",
            "server_uuid",
            "vm_alias",
            "vm_brand",
            "vm_image_uuid",
            "vm_uuid"
        ]
    );
    assert_eq!(web["vm_uuid"], "web-1");
    assert_eq!(web["vm_alias"], "web-1-alias");
    assert_eq!(web["vm_brand"], "runc");
    assert_eq!(web["vm_image_uuid"], "nginx:1.25");
    assert_eq!(web["server_uuid"], "cn1");
    assert_eq!(web["groups"], serde_json::json!(["web", "frontend"]));
    assert_eq!(list[1]["server_uuid"], "cn2");
}

#[test]
fn triton_values_are_all_strings_and_groups_always_an_array() {
    // Go's decoder fails the whole refresh on a non-string value; `null` groups are legal
    // but an empty array is what we promise.
    let list = containers(&triton_containers(&fleet(), "acme", None));
    for entry in &list {
        for (k, v) in entry.as_object().expect("an object") {
            if k == "groups" {
                let arr = v.as_array().expect("groups is an array");
                assert!(arr.iter().all(Value::is_string), "{entry}");
            } else {
                assert!(v.is_string(), "{k} in {entry}");
            }
        }
    }
    let batch = &list[0];
    assert_eq!(
        batch["vm_image_uuid"], "",
        "unknown image → \"\" → no label"
    );
    assert_eq!(batch["groups"], serde_json::json!([]));
}

#[test]
fn triton_lists_only_the_tenants_instances() {
    let globex = containers(&triton_containers(&fleet(), "globex", None));
    assert_eq!(ids(&globex, "vm_uuid"), ["web-9"]);
    // Unowned instances belong to nobody, not to a tenant named "".
    assert!(containers(&triton_containers(&fleet(), "", None)).is_empty());
}

#[test]
fn triton_empty_is_an_authoritative_empty_list() {
    let body = triton_containers(&fleet(), "initech", None);
    assert_eq!(body, br#"{"containers":[]}"#);
    let body = triton_containers(&Inventory::default(), "acme", Some(&groups(&["web"])));
    assert_eq!(body, br#"{"containers":[]}"#);
}

#[test]
fn triton_groups_filter_is_or() {
    let inv = fleet();
    let web = containers(&triton_containers(&inv, "acme", Some(&groups(&["web"]))));
    assert_eq!(ids(&web, "vm_uuid"), ["web-1"]);
    let either = groups(&["db", "frontend"]);
    let both = containers(&triton_containers(&inv, "acme", Some(&either)));
    assert_eq!(ids(&both, "vm_uuid"), ["db-1", "web-1"]);
    let none = containers(&triton_containers(&inv, "acme", Some(&groups(&["cache"]))));
    assert!(none.is_empty());
    // Group names match exactly, case included.
    let upper = containers(&triton_containers(&inv, "acme", Some(&groups(&["WEB"]))));
    assert!(upper.is_empty());
    // Another tenant's matching instance never leaks through the filter.
    let globex = containers(&triton_containers(&inv, "globex", Some(&groups(&["web"]))));
    assert_eq!(ids(&globex, "vm_uuid"), ["web-9"]);
}

// ---- Triton SD, role cn -------------------------------------------------------------------

#[test]
fn triton_nodes_have_the_exact_shape() {
    let v = json(&triton_nodes(&fleet()));
    let obj = v.as_object().expect("an object");
    assert_eq!(obj.keys().collect::<Vec<_>>(), ["cns"]);
    let cns = obj["cns"].as_array().expect("cns is an array");
    assert_eq!(ids(cns, "server_uuid"), ["cn1", "cn2"]);
    let cn1 = cns[0].as_object().expect("an object");
    assert_eq!(sorted_keys(cn1), ["server_hostname", "server_uuid"]);
    assert_eq!(cns[0]["server_hostname"], "cn1.dc1");
    assert_eq!(triton_nodes(&Inventory::default()), br#"{"cns":[]}"#);
}

// ---- Triton error bodies ------------------------------------------------------------------

#[test]
fn triton_error_bodies_never_decode_as_json() {
    // A JSON object (or `null`) would decode into an empty list in Prometheus and wipe the
    // tenant's targets; anything that is not JSON keeps them.
    for message in [
        "unauthorized",
        "",
        "{}",
        "null",
        "[]",
        "{\"containers\":[]}",
        "42",
    ] {
        let body = triton_error_body(message);
        assert!(
            serde_json::from_slice::<Value>(&body).is_err(),
            "{:?} parses as JSON",
            String::from_utf8_lossy(&body)
        );
        assert!(body.ends_with(b"\n"));
    }
    assert_eq!(triton_error_body("unauthorized"), b"error: unauthorized\n");
    assert!(sd::TRITON_ERROR_CONTENT_TYPE.starts_with("text/plain"));
    let bad = parse_groups(Some("groups=a%2Ca")).expect_err("duplicate");
    assert!(serde_json::from_slice::<Value>(&triton_error_body(&bad.to_string())).is_err());
}

// ---- the groups parameter -----------------------------------------------------------------

fn parsed(query: &str) -> Result<Option<Vec<String>>, SdError> {
    parse_groups(Some(query))
}

#[test]
fn groups_absent_means_no_filter() {
    assert_eq!(parse_groups(None), Ok(None));
    assert_eq!(parsed(""), Ok(None));
    assert_eq!(parsed("foo=bar&x"), Ok(None));
}

#[test]
fn groups_are_form_decoded_as_prometheus_escapes_them() {
    // groups: [web, db] → ?groups=web%2Cdb
    assert_eq!(parsed("groups=web%2Cdb"), Ok(Some(groups(&["web", "db"]))));
    assert_eq!(parsed("groups=web%2cdb"), Ok(Some(groups(&["web", "db"]))));
    assert_eq!(parsed("?groups=web,db"), Ok(Some(groups(&["web", "db"]))));
    assert_eq!(
        parsed("x=1&groups=a_b-C9&y=%zz"),
        Ok(Some(groups(&["a_b-C9"])))
    );
    // An escaped key is still the key.
    assert_eq!(parsed("%67roups=web"), Ok(Some(groups(&["web"]))));
    // groups: [foo, "b r"] → ?groups=foo%2Cb+r: the space is decoded, then refused by the
    // grammar, as cmon does.
    assert!(matches!(
        parsed("groups=foo%2Cb+r"),
        Err(SdError::BadGroupName(n)) if n == "b r"
    ));
}

#[test]
fn groups_grammar_limits() {
    let hundred: Vec<String> = (0..100).map(|i| format!("g{i}")).collect();
    let q = format!("groups={}", hundred.join("%2C"));
    assert_eq!(parsed(&q), Ok(Some(hundred.clone())));
    let q = format!("groups={}%2Cg100", hundred.join("%2C"));
    assert_eq!(parsed(&q), Err(SdError::GroupCount(101)));

    let long = "a".repeat(100);
    assert_eq!(
        parsed(&format!("groups={long}")),
        Ok(Some(vec![long.clone()]))
    );
    assert!(matches!(
        parsed(&format!("groups={long}a")),
        Err(SdError::BadGroupName(_))
    ));
}

#[test]
fn groups_invalid_values() {
    assert_eq!(parsed("groups=a&groups=b"), Err(SdError::RepeatedGroups));
    assert_eq!(parsed("groups=a&groups=a"), Err(SdError::RepeatedGroups));
    assert_eq!(
        parsed("groups=web%2Cdb%2Cweb"),
        Err(SdError::DuplicateGroup("web".into()))
    );
    for bad in [
        "groups=",
        "groups",
        "groups=web%2C",
        "groups=%2Cweb",
        "groups=a%2C%2Cb",
        "groups=we.b",
        "groups=we%2Fb",
        "groups=caf%C3%A9",
        "groups=a+b",
        "groups=a%3Bb",
    ] {
        assert!(
            matches!(parsed(bad), Err(SdError::BadGroupName(_))),
            "{bad}: {:?}",
            parsed(bad)
        );
    }
    assert_eq!(parsed("groups=%zz"), Err(SdError::BadEncoding));
    assert_eq!(parsed("groups=%2"), Err(SdError::BadEncoding));
    assert_eq!(parsed("groups=%ff"), Err(SdError::BadEncoding));
    // Messages name the parameter, like cmon's `invalid "groups": …`.
    assert!(SdError::RepeatedGroups
        .to_string()
        .starts_with("invalid \"groups\""));
}

// ---- HTTP SD ------------------------------------------------------------------------------

fn is_label_name(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// Checks the rules of §3.3 that hold for any body; returns the groups.
fn http_groups(body: &[u8]) -> Vec<(String, BTreeMap<String, String>)> {
    let v = json(body);
    let arr = v.as_array().expect("the body is a JSON array");
    arr.iter()
        .map(|g| {
            let obj = g.as_object().expect("a group is an object, never null");
            assert_eq!(
                sorted_keys(obj),
                ["labels", "targets"],
                "only targets and labels: {g}"
            );
            let targets = obj["targets"].as_array().expect("targets is an array");
            assert_eq!(targets.len(), 1, "one group per target: {g}");
            let target = targets[0].as_str().expect("a string target").to_string();
            assert!(!target.contains('/'), "{target}");
            let labels: BTreeMap<String, String> = obj["labels"]
                .as_object()
                .expect("labels is an object")
                .iter()
                .map(|(k, v)| {
                    assert!(is_label_name(k), "bad label name {k}");
                    let v = v.as_str().expect("label values are strings");
                    assert!(!v.is_empty(), "empty label {k}");
                    (k.clone(), v.to_string())
                })
                .collect();
            (target, labels)
        })
        .collect()
}

#[test]
fn http_sd_one_group_per_instance_with_triton_labels() {
    let body = http_sd(&fleet(), "acme", None, "cmon.dc1.example.com", 9163);
    let groups = http_groups(&body);
    let targets: Vec<_> = groups.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        targets,
        [
            "batch-1.cmon.dc1.example.com:9163",
            "db-1.cmon.dc1.example.com:9163",
            "web-1.cmon.dc1.example.com:9163",
        ]
    );
    let web = &groups[2].1;
    let expected: BTreeMap<String, String> = [
        ("__meta_triton_machine_id", "web-1"),
        ("__meta_triton_machine_alias", "web-1-alias"),
        ("__meta_triton_machine_brand", "runc"),
        ("__meta_triton_machine_image", "nginx:1.25"),
        ("__meta_triton_server_id", "cn1"),
        ("__meta_triton_groups", ",web,frontend,"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(*web, expected);
    // No groups, no image: those labels are absent, as triton SD leaves them.
    let batch = &groups[0].1;
    assert!(!batch.contains_key("__meta_triton_groups"));
    assert!(!batch.contains_key("__meta_triton_machine_image"));
    assert_eq!(batch["__meta_triton_machine_id"], "batch-1");
    assert_eq!(groups[1].1["__meta_triton_server_id"], "cn2");
}

#[test]
fn http_sd_tenant_isolation_and_or_filter() {
    let inv = fleet();
    let globex = http_groups(&http_sd(&inv, "globex", None, "s.example", 443));
    let targets: Vec<_> = globex.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(targets, ["web-9.s.example:443"]);
    let filter = groups(&["db", "frontend"]);
    let acme = http_groups(&http_sd(&inv, "acme", Some(&filter), "s.example", 9163));
    let ids: Vec<_> = acme
        .iter()
        .map(|(_, l)| l["__meta_triton_machine_id"].as_str())
        .collect();
    assert_eq!(ids, ["db-1", "web-1"]);
}

#[test]
fn http_sd_empty_is_an_empty_array() {
    assert_eq!(http_sd(&fleet(), "initech", None, "s.example", 9163), b"[]");
    assert_eq!(
        http_sd(
            &fleet(),
            "acme",
            Some(&groups(&["cache"])),
            "s.example",
            9163
        ),
        b"[]"
    );
    assert_eq!(
        http_sd_nodes(&Inventory::default(), "s.example", 9163),
        b"[]"
    );
}

#[test]
fn http_sd_content_type_matches_prometheus_regex() {
    // ^(?i:application/json(;\s*charset=("utf-8"|utf-8))?)$ — no regex crate here, so the
    // accepted forms are spelled out.
    let ct = HTTP_SD_CONTENT_TYPE.trim().to_ascii_lowercase();
    assert!(ct == "application/json" || ct == "application/json; charset=utf-8");
}

#[test]
fn http_sd_nodes_for_operators() {
    let groups = http_groups(&http_sd_nodes(&fleet(), "cmon.dc1.example.com", 9163));
    assert_eq!(groups.len(), 2);
    assert_eq!(groups[0].0, "cn1.cmon.dc1.example.com:9163");
    assert_eq!(groups[0].1["__meta_triton_machine_id"], "cn1");
    assert_eq!(groups[0].1["__meta_triton_machine_alias"], "cn1.dc1");
    assert_eq!(groups[0].1.len(), 2);
    // No hostname → no alias label.
    assert_eq!(
        groups[1].1.keys().collect::<Vec<_>>(),
        ["__meta_triton_machine_id"]
    );
}

// ---- Debian's Prometheus 2.42 reads the bodies ----------------------------------------------
//
// These tests need `promtool` (Debian package `prometheus`, installed by deploy/test.sh) and
// fail loudly without it. `promtool check service-discovery` runs the real triton and HTTP
// SD code of Prometheus 2.42 against a one-route server here and prints what it discovered.

mod real {
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};

    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    use serde_json::Value;
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// What the server answers: status line, content type, body.
    pub type Reply = (&'static str, &'static str, Vec<u8>);

    /// Serves every request with `route(request target)`; returns the address and the
    /// request targets seen. TLS (self-signed) when `tls`, since triton SD only speaks HTTPS.
    pub async fn serve(
        tls: bool,
        route: impl Fn(&str) -> Reply + Send + Sync + 'static,
    ) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let acceptor = tls.then(acceptor);
        let route = Arc::new(route);
        let log = Arc::clone(&seen);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (route, log, acceptor) =
                    (Arc::clone(&route), Arc::clone(&log), acceptor.clone());
                tokio::spawn(async move {
                    match acceptor {
                        Some(a) => {
                            if let Ok(stream) = a.accept(tcp).await {
                                answer(stream, &*route, &log).await;
                            }
                        }
                        None => answer(tcp, &*route, &log).await,
                    }
                });
            }
        });
        (addr, seen)
    }

    fn acceptor() -> tokio_rustls::TlsAcceptor {
        let key = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
        let cert = CertificateDer::from(key.cert.der().to_vec());
        let private = PrivateKeyDer::try_from(key.key_pair.serialize_der()).expect("key");
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![cert], private)
            .expect("server config");
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    }

    async fn answer<S: AsyncRead + AsyncWrite + Unpin>(
        mut stream: S,
        route: &(dyn Fn(&str) -> Reply + Send + Sync),
        log: &Mutex<Vec<String>>,
    ) {
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        let head = String::from_utf8_lossy(&head);
        let target = head.split(' ').nth(1).unwrap_or("").to_string();
        log.lock().expect("log").push(target.clone());
        let (status, content_type, body) = route(&target);
        let reply = format!(
            "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n",
            body.len()
        );
        let _ = stream.write_all(reply.as_bytes()).await;
        let _ = stream.write_all(&body).await;
        let _ = stream.shutdown().await;
    }

    /// Runs `promtool check service-discovery` for `job` in `config` (testkit's, on a
    /// blocking thread); returns the parsed targets and promtool's log (stderr).
    pub async fn promtool(config: String, job: &'static str) -> (Vec<Value>, String) {
        tokio::task::spawn_blocking(move || {
            lookout_testkit::prometheus::check_service_discovery(&config, job)
        })
        .await
        .expect("promtool task")
    }

    /// The discovered `__meta_*` and `__address__` labels of each target, by address.
    pub use lookout_testkit::prometheus::triton_labels as discovered;
}

fn triton_config(port: u16, groups: &str) -> String {
    format!(
        "scrape_configs:\n  - job_name: triton\n    scheme: https\n    triton_sd_configs:\n\
         \x20     - account: acme\n        role: container\n        endpoint: 127.0.0.1\n\
         \x20       dns_suffix: cmon.dc1.example.com\n        port: {port}\n\
         \x20       groups: {groups}\n        tls_config: {{insecure_skip_verify: true}}\n"
    )
}

fn ok_json(body: Vec<u8>) -> real::Reply {
    ("200 OK", "application/json", body)
}

#[tokio::test(flavor = "multi_thread")]
async fn needs_promtool_triton_and_http_sd_give_the_same_labels() {
    // Triton SD: Prometheus escapes the groups, our parser decodes them, the OR filter runs.
    let (addr, seen) = real::serve(true, |target| {
        let query = target.split_once('?').map(|(_, q)| q);
        match parse_groups(query) {
            Ok(groups) => ok_json(triton_containers(&fleet(), "acme", groups.as_deref())),
            Err(e) => (
                "400 Bad Request",
                "text/plain",
                triton_error_body(&e.to_string()),
            ),
        }
    })
    .await;
    let (targets, log) =
        real::promtool(triton_config(addr.port(), "[db, frontend]"), "triton").await;
    assert_eq!(
        *seen.lock().expect("log"),
        ["/v1/discover?groups=db%2Cfrontend"],
        "{log}"
    );
    let triton = real::discovered(&targets);

    // HTTP SD of the same instances.
    let filter = groups(&["db", "frontend"]);
    let body = http_sd(
        &fleet(),
        "acme",
        Some(&filter),
        "cmon.dc1.example.com",
        addr.port(),
    );
    let (addr, _) = real::serve(false, move |_| ok_json(body.clone())).await;
    let config = format!(
        "scrape_configs:\n  - job_name: sd\n    scheme: https\n    http_sd_configs:\n\
         \x20     - url: http://{addr}/v1/sd\n"
    );
    let (targets, log) = real::promtool(config, "sd").await;
    let http = real::discovered(&targets);

    assert_eq!(triton.len(), 2, "{log}");
    assert_eq!(
        triton
            .iter()
            .map(|(a, _)| a.split(':').next())
            .collect::<Vec<_>>(),
        [
            Some("db-1.cmon.dc1.example.com"),
            Some("web-1.cmon.dc1.example.com")
        ]
    );
    // Same `__meta_triton_*` labels either way, so relabel rules carry over.
    let meta = |v: &[(String, Vec<(String, String)>)]| {
        v.iter().map(|(_, m)| m.clone()).collect::<Vec<_>>()
    };
    assert_eq!(meta(&triton), meta(&http), "{log}");
    let web = &triton[1].1;
    assert!(web.contains(&("__meta_triton_groups".into(), ",web,frontend,".into())));
    assert!(web.contains(&("__meta_triton_machine_image".into(), "nginx:1.25".into())));
}

#[tokio::test(flavor = "multi_thread")]
async fn needs_promtool_triton_error_body_fails_the_refresh() {
    // Our error body makes the refresh fail (Prometheus keeps the last targets)...
    let (addr, _) = real::serve(true, |_| {
        (
            "401 Unauthorized",
            sd::TRITON_ERROR_CONTENT_TYPE,
            triton_error_body("unauthorized"),
        )
    })
    .await;
    let (targets, log) = real::promtool(triton_config(addr.port(), "[web]"), "triton").await;
    assert!(targets.is_empty());
    assert!(
        log.contains("an error occurred unmarshaling the discovery response json"),
        "{log}"
    );
    // ...whereas restify's JSON error object is taken as an authoritative empty list: no
    // error at all, which in a running Prometheus silently drops every target. (A premise
    // about Prometheus, not a test of lookout: it is why our error bodies are not JSON. The
    // real proxy's 401 is put to promtool in proxy/tests/sd_promtool.rs.)
    let (addr, _) = real::serve(true, |_| {
        (
            "401 Unauthorized",
            "application/json",
            br#"{"code":"UnauthorizedError","message":""}"#.to_vec(),
        )
    })
    .await;
    let (targets, log) = real::promtool(triton_config(addr.port(), "[web]"), "triton").await;
    assert!(targets.is_empty());
    assert!(!log.contains("unmarshaling"), "{log}");
}
