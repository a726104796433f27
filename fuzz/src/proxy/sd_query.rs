//! `sd_query`: discovery's `?groups=` parsing and the SD bodies it filters, the proxy's
//! scrape-timeout header, and Triton error bodies.

use std::collections::BTreeSet;
use std::time::Duration;

use http::{HeaderMap, HeaderValue};
use lookout_discovery::sd::{
    http_sd, is_group_name, parse_groups, triton_containers, triton_error_body, SdError,
    MAX_GROUPS, MAX_GROUP_LEN,
};
use lookout_discovery::{Instance, Inventory};
use lookout_proxy::server::handler::scrape_deadline;

use super::text;

/// The scrape deadline used when the client names none.
const DEFAULT_DEADLINE: Duration = Duration::from_secs(10);
/// The cap `scrape_deadline` documents.
const MAX_DEADLINE: Duration = Duration::from_secs(300);

/// A discovery request's query string (the whole input, then its first line) for
/// `?groups=`; the first line as `X-Prometheus-Scrape-Timeout-Seconds`; the input as the
/// message of a Triton error body.
///
/// Invariants: accepted groups are 1 to 100 unique valid names that round-trip through a
/// literal comma, `%2C`/`%2c` and a leading `?`; unrelated parameters change nothing; a
/// second `groups` is always refused; a query without `groups` gets one when it is appended;
/// each refusal is consistent with its reason. The Triton and HTTP SD bodies for the parsed
/// filter list exactly the tenant's instances sharing a group with it (cmon's OR). The
/// deadline is the client's positive number capped at 300 s, else the default. A Triton
/// error body never decodes as JSON.
pub fn sd_query(data: &[u8]) {
    let t = text(data);
    check_groups(&t);
    let first = t.split('\n').next().unwrap_or_default();
    if first.len() != t.len() {
        check_groups(first);
    }
    let first_bytes = data.split(|&b| b == b'\n').next().unwrap_or_default();
    check_scrape_timeout(first_bytes);

    let body = triton_error_body(&t);
    assert!(body.starts_with(b"error: ") && body.ends_with(b"\n"));
    assert!(
        serde_json::from_slice::<serde_json::Value>(&body).is_err(),
        "a Triton error body decodes as JSON"
    );
}

fn check_groups(q: &str) {
    let got = parse_groups(Some(q));
    assert_eq!(got, parse_groups(Some(q)), "deterministic");
    let with = |extra: &str| parse_groups(Some(&format!("{q}&{extra}")));
    assert_eq!(
        with("other=1"),
        got,
        "an unrelated parameter changed the result"
    );
    assert_eq!(with("groupsx=web"), got, "`groupsx` taken for `groups`");
    if !q.starts_with('?') {
        assert_eq!(parse_groups(Some(&format!("?{q}"))), got, "leading ?");
    }
    let repeated = Err(SdError::RepeatedGroups);
    match &got {
        Ok(None) => {
            let web = Ok(Some(vec!["web".to_string()]));
            assert_eq!(with("groups=web"), web, "appended groups ignored");
            assert_eq!(with("%67roup%73=web"), web, "encoded key ignored");
        }
        Ok(Some(groups)) => {
            assert!(
                (1..=MAX_GROUPS).contains(&groups.len()),
                "{} groups",
                groups.len()
            );
            for (i, g) in groups.iter().enumerate() {
                assert!(is_group_name(g), "group {g:?}");
                assert!(!groups[..i].contains(g), "{g:?} twice");
            }
            for sep in [",", "%2C", "%2c"] {
                let q2 = format!("groups={}", groups.join(sep));
                assert_eq!(parse_groups(Some(&q2)), got, "{q2:?}");
            }
            let q3 = format!("?x=1&groups={}&y", groups.join("%2C"));
            assert_eq!(parse_groups(Some(&q3)), got, "{q3:?}");
            assert_eq!(with("groups=web"), repeated, "second groups accepted");
            assert_eq!(
                with("%67roups=web"),
                repeated,
                "second, encoded groups accepted"
            );
            check_filter(groups);
        }
        Err(SdError::RepeatedGroups) => {
            assert_eq!(with("groups=web"), repeated);
        }
        Err(e) => {
            assert_eq!(
                with("groups=web"),
                repeated,
                "a second groups reported as {e:?}"
            );
            match e {
                SdError::GroupCount(n) => assert!(*n == 0 || *n > MAX_GROUPS, "{n}"),
                SdError::BadGroupName(g) => assert!(
                    !is_group_name(g) || g.chars().count() == MAX_GROUP_LEN,
                    "{g:?} refused"
                ),
                SdError::DuplicateGroup(g) => assert!(is_group_name(g), "{g:?}"),
                SdError::BadEncoding | SdError::RepeatedGroups => {}
            }
        }
    }
}

fn instance(id: &str, tenant: &str, groups: &[&str]) -> Instance {
    Instance {
        id: id.into(),
        runtime_id: id.into(),
        generation: String::new(),
        node: "node-1".into(),
        tenant: Some(tenant.into()),
        alias: id.into(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        image: None,
        source: "runc".into(),
        labels: Default::default(),
    }
}

/// Discovery bodies for a parsed filter list exactly the instances it selects.
fn check_filter(groups: &[String]) {
    let mut inv = Inventory::default();
    for i in [
        instance("web-1", "acme", &["web"]),
        instance("db-1", "acme", &["db", "web"]),
        instance("cache-1", "acme", &["cache"]),
        instance("lone-1", "acme", &[]),
        // Not a group name, so no filter can select it.
        instance("odd-1", "acme", &["not a group"]),
        instance("other-1", "globex", &["web", "db"]),
    ] {
        inv.insert_instance(i);
    }
    let last = groups.last().map_or("", String::as_str);
    let picked = instance("picked-1", "acme", &["zz no", last]);
    inv.insert_instance(picked);

    let want: BTreeSet<String> = inv
        .owned_by("acme")
        .filter(|i| i.groups.iter().any(|g| groups.contains(g)))
        .map(|i| i.id.clone())
        .collect();
    assert!(want.contains("picked-1"));

    let triton: serde_json::Value =
        serde_json::from_slice(&triton_containers(&inv, "acme", Some(groups)))
            .expect("Triton body is JSON");
    let listed: BTreeSet<String> = triton["containers"]
        .as_array()
        .expect("a containers array")
        .iter()
        .filter_map(|c| c["vm_uuid"].as_str().map(str::to_string))
        .collect();
    assert_eq!(listed, want, "Triton SD for groups {groups:?}");

    let suffix = "lookout.example.com";
    let http: serde_json::Value =
        serde_json::from_slice(&http_sd(&inv, "acme", Some(groups), suffix, 9163))
            .expect("HTTP SD body is JSON");
    let mut listed = BTreeSet::new();
    for g in http.as_array().expect("an array of groups") {
        let id = g["labels"]["__meta_triton_machine_id"]
            .as_str()
            .expect("a machine id");
        assert_eq!(g["targets"][0], format!("{id}.{suffix}:9163"));
        let inst = inv.instance(id).expect("listed instances exist");
        let label = format!(",{},", inst.groups.join(","));
        assert_eq!(g["labels"]["__meta_triton_groups"], label);
        listed.insert(id.to_string());
    }
    assert_eq!(listed, want, "HTTP SD for groups {groups:?}");
}

fn check_scrape_timeout(value: &[u8]) {
    assert_eq!(
        scrape_deadline(&HeaderMap::new(), DEFAULT_DEADLINE),
        DEFAULT_DEADLINE
    );
    let Ok(v) = HeaderValue::from_bytes(value) else {
        return;
    };
    let mut headers = HeaderMap::new();
    headers.insert("x-prometheus-scrape-timeout-seconds", v.clone());
    let got = scrape_deadline(&headers, DEFAULT_DEADLINE);
    let asked = v
        .to_str()
        .ok()
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0);
    match asked {
        None => assert_eq!(got, DEFAULT_DEADLINE, "{v:?}"),
        Some(s) if s >= MAX_DEADLINE.as_secs_f64() => assert_eq!(got, MAX_DEADLINE, "{v:?}"),
        Some(s) => assert!((got.as_secs_f64() - s).abs() < 1e-6, "{v:?} gave {got:?}"),
    }
}
