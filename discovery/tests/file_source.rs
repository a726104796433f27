//! The `file` inventory source: loading, every rejected case, and the watcher's reloads
//! against real files in a temporary directory.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lookout_discovery::file::{self, FileError, Problem};
use lookout_discovery::{Inventory, Shared};

const GOOD: &str = r#"
[[nodes]]
id = "cn1"
agent = "10.0.0.11:9164"
hostname = "cn1.dc1"

[[nodes]]
id = "cn2"
agent = "10.0.0.12:9164"

[[instances]]
id = "web-1"
node = "cn1"
tenant = "acme"
alias = "web01"
groups = ["web", "frontend"]
image = "nginx:1.25"
runtime_id = "4b825dc642cb6eb9a060e54bf8d69288"
source = "runc"
labels = { team = "shop" }

[[instances]]
id = "spare-1"
node = "cn2"
"#;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write the inventory file");
    path
}

fn problems(text: &str) -> Vec<Problem> {
    let dir = tempfile::tempdir().expect("tempdir");
    match file::load(&write(dir.path(), "inventory.toml", text)) {
        Err(FileError::Invalid { problems, .. }) => problems,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn good_toml_loads_with_defaults() {
    let dir = tempfile::tempdir().expect("tempdir");
    let inv = file::load(&write(dir.path(), "inventory.toml", GOOD)).expect("loads");
    let node_ids: Vec<_> = inv.nodes().map(|n| n.id.as_str()).collect();
    assert_eq!(node_ids, ["cn1", "cn2"]);
    let node = |id: &str| inv.node(id).expect("node").clone();
    assert_eq!(node("cn1").agent, "10.0.0.11:9164");
    assert_eq!(node("cn1").hostname, "cn1.dc1");
    assert_eq!(node("cn2").hostname, "");

    let web = inv.instance("web-1").expect("web-1");
    assert_eq!(web.node, "cn1");
    assert_eq!(web.tenant.as_deref(), Some("acme"));
    assert_eq!(web.alias, "web01");
    assert_eq!(web.groups, ["web", "frontend"]);
    assert_eq!(web.image.as_deref(), Some("nginx:1.25"));
    assert_eq!(web.runtime_id, "4b825dc642cb6eb9a060e54bf8d69288");
    assert_eq!(web.source, "runc");
    assert_eq!(web.labels["team"], "shop");

    let spare = inv.instance("spare-1").expect("spare-1");
    assert_eq!(spare.tenant, None);
    assert_eq!(spare.alias, "spare-1");
    assert_eq!(spare.runtime_id, "spare-1");
    assert_eq!(spare.source, file::DEFAULT_SOURCE);
    assert!(spare.groups.is_empty() && spare.image.is_none() && spare.labels.is_empty());
    assert_eq!(inv.owned_by("acme").count(), 1);
}

#[test]
fn json_is_the_same_format() {
    let dir = tempfile::tempdir().expect("tempdir");
    let toml = file::load(&write(dir.path(), "a.toml", GOOD)).expect("toml loads");
    let json = r#"{
      "nodes": [{"id": "cn1", "agent": "10.0.0.11:9164", "hostname": "cn1.dc1"},
                {"id": "cn2", "agent": "10.0.0.12:9164"}],
      "instances": [
        {"id": "web-1", "node": "cn1", "tenant": "acme", "alias": "web01",
         "groups": ["web", "frontend"], "image": "nginx:1.25",
         "runtime_id": "4b825dc642cb6eb9a060e54bf8d69288", "source": "runc",
         "labels": {"team": "shop"}},
        {"id": "spare-1", "node": "cn2"}]}"#;
    let from_json = file::load(&write(dir.path(), "a.JSON", json)).expect("json loads");
    assert_eq!(from_json, toml);
}

#[test]
fn an_empty_file_is_an_empty_inventory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let inv = file::load(&write(dir.path(), "empty.toml", "")).expect("loads");
    assert_eq!(inv, Inventory::default());
}

#[test]
fn duplicate_ids_are_listed() {
    let text = format!("{GOOD}\n[[nodes]]\nid = \"cn1\"\nagent = \"x:1\"\n[[instances]]\nid = \"web-1\"\nnode = \"cn2\"\n");
    assert_eq!(
        problems(&text),
        [
            Problem::DuplicateNode("cn1".into()),
            Problem::DuplicateInstance("web-1".into())
        ]
    );
}

#[test]
fn every_problem_is_listed_at_once() {
    let text = r#"
[[nodes]]
id = "CN1"
agent = ""

[[instances]]
id = "Web_1"
node = "cn9"
tenant = ""
groups = ["ok", "a,b", ""]
"#;
    let found = problems(text);
    assert_eq!(
        found,
        [
            Problem::BadNodeId("CN1".into()),
            Problem::EmptyAgent("CN1".into()),
            Problem::BadInstanceId("Web_1".into()),
            Problem::UnknownNode {
                instance: "Web_1".into(),
                node: "cn9".into()
            },
            Problem::EmptyTenant("Web_1".into()),
            Problem::BadGroup {
                instance: "Web_1".into(),
                group: "a,b".into()
            },
            Problem::BadGroup {
                instance: "Web_1".into(),
                group: "".into()
            },
        ]
    );
    // The error's message names each of them.
    let dir = tempfile::tempdir().expect("tempdir");
    let err = file::load(&write(dir.path(), "i.toml", text)).expect_err("invalid");
    let msg = err.to_string();
    for needle in ["\"CN1\"", "\"Web_1\"", "\"cn9\"", "empty tenant", "\"a,b\""] {
        assert!(msg.contains(needle), "{needle} missing from {msg}");
    }
}

#[test]
fn instance_on_unknown_node() {
    let text = "[[instances]]\nid = \"web-1\"\nnode = \"cn1\"\n";
    assert_eq!(
        problems(text),
        [Problem::UnknownNode {
            instance: "web-1".into(),
            node: "cn1".into()
        }]
    );
}

#[test]
fn ids_must_be_dns_labels() {
    let long = "a".repeat(64);
    let text = format!(
        "[[nodes]]\nid = \"cn1\"\nagent = \"a:1\"\n\
         [[instances]]\nid = \"{long}\"\nnode = \"cn1\"\n\
         [[instances]]\nid = \"web.1\"\nnode = \"cn1\"\n\
         [[instances]]\nid = \"-web\"\nnode = \"cn1\"\n"
    );
    assert_eq!(
        problems(&text),
        [
            Problem::BadInstanceId(long),
            Problem::BadInstanceId("web.1".into()),
            Problem::BadInstanceId("-web".into()),
        ]
    );
}

#[test]
fn unknown_keys_are_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, text, key) in [
        ("top.toml", "colour = 1\n", "colour"),
        ("node.toml", "[[nodes]]\nid = \"cn1\"\nagent = \"a:1\"\naddr = \"x\"\n", "addr"),
        (
            "inst.toml",
            "[[nodes]]\nid = \"cn1\"\nagent = \"a:1\"\n[[instances]]\nid = \"a\"\nnode = \"cn1\"\nowner = \"acme\"\n",
            "owner",
        ),
        ("inst.json", r#"{"instances": [{"id": "a", "node": "n", "grups": []}]}"#, "grups"),
    ] {
        match file::load(&write(dir.path(), name, text)) {
            Err(FileError::Parse { message, .. }) => {
                assert!(message.contains(key), "{name}: {message}")
            }
            other => panic!("{name}: expected a parse error, got {other:?}"),
        }
    }
}

#[test]
fn syntax_errors_missing_keys_and_missing_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, text) in [
        ("syntax.toml", "[[nodes]\nid = 1"),
        ("type.toml", "[[nodes]]\nid = 1\nagent = \"a:1\"\n"),
        ("missing.toml", "[[nodes]]\nid = \"cn1\"\n"),
        ("syntax.json", "{\"nodes\": ["),
    ] {
        assert!(
            matches!(
                file::load(&write(dir.path(), name, text)),
                Err(FileError::Parse { .. })
            ),
            "{name}"
        );
    }
    assert!(matches!(
        file::load(&dir.path().join("absent.toml")),
        Err(FileError::Read { .. })
    ));
}

// ---- watch --------------------------------------------------------------------------------

/// Polls `cond` until it holds, failing the test after `limit`.
async fn eventually(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

const WAIT: Duration = Duration::from_secs(10);

fn instance_ids(shared: &Shared) -> Vec<String> {
    shared.load().instances().map(|i| i.id.clone()).collect()
}

/// Writes through a temporary file and a rename, as editors and config managers do.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write the new version");
    std::fs::rename(&tmp, path).expect("rename it into place");
}

#[tokio::test]
async fn watch_reloads_changes_and_keeps_the_last_good_inventory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(dir.path(), "inventory.toml", GOOD);
    let shared = Shared::new();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(file::watch(
        path.clone(),
        Arc::clone(&shared),
        Duration::from_millis(20),
        stopped,
    ));

    eventually("the first load", WAIT, || shared.ready()).await;
    assert_eq!(instance_ids(&shared), ["spare-1", "web-1"]);
    assert_eq!(shared.status().last_error, None);

    // An in-place edit.
    let more = format!("{GOOD}\n[[instances]]\nid = \"db-1\"\nnode = \"cn2\"\n");
    std::fs::write(&path, &more).expect("edit in place");
    eventually("the in-place edit", WAIT, || {
        instance_ids(&shared).len() == 3
    })
    .await;
    assert_eq!(instance_ids(&shared), ["db-1", "spare-1", "web-1"]);

    // A broken edit: the error is reported, the inventory stays.
    let before = shared.load();
    std::fs::write(&path, "[[instances]]\nid = \"x\"\nnode = \"nowhere\"\n").expect("break it");
    eventually("the broken edit to be reported", WAIT, || {
        shared.status().last_error.is_some()
    })
    .await;
    let error = shared.status().last_error.unwrap_or_default();
    assert!(error.contains("unknown node \"nowhere\""), "{error}");
    assert_eq!(
        shared.load(),
        before,
        "the last good inventory stays in force"
    );
    assert!(shared.ready());

    // A same-size edit right after the last one is still seen (content, not just stat).
    let same_size = more.replace("db-1", "db-2");
    std::fs::write(&path, &same_size).expect("fix it");
    eventually("the fix", WAIT, || {
        instance_ids(&shared).contains(&"db-2".to_string())
    })
    .await;
    assert_eq!(
        shared.status().last_error,
        None,
        "a good load clears the error"
    );
    std::fs::write(&path, more.replace("db-1", "db-3")).expect("same size again");
    eventually("the same-size edit", WAIT, || {
        instance_ids(&shared).contains(&"db-3".to_string())
    })
    .await;

    // An atomic replacement, and then a deleted file: reported, inventory kept.
    replace(&path, GOOD);
    eventually("the replacement", WAIT, || instance_ids(&shared).len() == 2).await;
    std::fs::remove_file(&path).expect("remove it");
    eventually("the missing file to be reported", WAIT, || {
        shared.status().last_error.is_some()
    })
    .await;
    assert_eq!(instance_ids(&shared), ["spare-1", "web-1"]);

    stop.send(true).expect("the watcher is listening");
    tokio::time::timeout(WAIT, task)
        .await
        .expect("the watcher stops on shutdown")
        .expect("the watcher does not panic");
}

#[tokio::test]
async fn watch_reports_a_broken_file_at_start_and_loads_it_once_fixed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(dir.path(), "inventory.json", "{\"nodes\": 3}");
    let shared = Shared::new();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(file::watch(
        path.clone(),
        Arc::clone(&shared),
        Duration::from_millis(20),
        stopped,
    ));
    eventually("the start-up error", WAIT, || {
        shared.status().last_error.is_some()
    })
    .await;
    assert!(!shared.ready(), "nothing was ever published");
    replace(&path, r#"{"nodes": [{"id": "cn1", "agent": "a:1"}]}"#);
    eventually("the fixed file", WAIT, || shared.ready()).await;
    let node_ids: Vec<_> = shared.load().nodes().map(|n| n.id.clone()).collect();
    assert_eq!(node_ids, ["cn1"]);

    // Dropping the sender also stops the watcher.
    drop(stop);
    tokio::time::timeout(WAIT, task)
        .await
        .expect("the watcher stops when shutdown is dropped")
        .expect("the watcher does not panic");
}
