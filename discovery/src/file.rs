//! The `file` source: the whole inventory in one TOML or JSON file, reloaded when it changes.
//!
//! For tests and static setups. [`load`] reads and checks a file once; [`watch()`] polls it
//! and publishes every good version to a [`Shared`] inventory. A broken edit is reported
//! through [`Shared::fail`] and the last good inventory stays in force.
//!
//! # Format
//!
//! A file whose name ends in `.json` is JSON; anything else is TOML. Both have the same
//! shape: a list of `nodes` and a list of `instances`. Unknown keys are errors, so a typo
//! never silently drops a setting.
//!
//! ```toml
//! [[nodes]]
//! id = "cn1"                      # required; a DNS label (routes `cn1.<suffix>`)
//! agent = "10.0.0.11:9164"        # required; the agent's host:port
//! hostname = "cn1.dc1"            # optional; shown as the node's alias
//!
//! [[instances]]
//! id = "web-1"                    # required; a DNS label (routes `web-1.<suffix>`)
//! node = "cn1"                    # required; one of the nodes above
//! tenant = "acme"                 # optional; without it nobody owns the instance
//! alias = "web01"                 # optional; defaults to `id`
//! groups = ["web", "frontend"]    # optional; names of [a-zA-Z0-9_-], at most 100 characters
//! image = "nginx:1.25"            # optional
//! runtime_id = "4b825dc642cb…"    # optional; defaults to `id`
//! source = "file"                 # optional; defaults to "file" (Triton's `vm_brand`)
//! labels = { team = "shop" }      # optional; free-form runtime labels
//! ```
//!
//! The same in JSON:
//!
//! ```json
//! {"nodes": [{"id": "cn1", "agent": "10.0.0.11:9164", "hostname": "cn1.dc1"}],
//!  "instances": [{"id": "web-1", "node": "cn1", "tenant": "acme", "groups": ["web"]}]}
//! ```
//!
//! [`load`] reports every problem it finds at once (duplicate ids, ids that are not DNS
//! labels, instances on unknown nodes, bad group names, empty agent addresses or tenants),
//! not just the first. Syntax errors and unknown keys stop parsing, so they come alone.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;

use crate::inventory::{Inventory, Node, Shared};
use crate::model::Instance;
use crate::naming::is_dns_label;
use crate::sd::is_group_name;

/// The `source` of instances whose file entry does not name one.
pub const DEFAULT_SOURCE: &str = "file";

/// Why an inventory file was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Not valid TOML/JSON, an unknown key, a missing required key or a wrong type.
    #[error("parsing {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with the position it gives.
        message: String,
    },
    /// Well-formed, but inconsistent; every problem found is listed.
    #[error("{path}: {}", join(problems))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Each problem, in file order (nodes first).
        problems: Vec<Problem>,
    },
}

/// One inconsistency in an inventory file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// Two nodes with the same id.
    DuplicateNode(String),
    /// Two instances with the same id.
    DuplicateInstance(String),
    /// A node id that is not a lowercase DNS label.
    BadNodeId(String),
    /// An instance id that is not a lowercase DNS label.
    BadInstanceId(String),
    /// A node with an empty `agent` address.
    EmptyAgent(String),
    /// An instance whose `node` is not in the file.
    UnknownNode {
        /// The instance.
        instance: String,
        /// The node it names.
        node: String,
    },
    /// An instance whose `tenant` is the empty string (leave it out for "unowned").
    EmptyTenant(String),
    /// A group name outside the `?groups=` grammar.
    BadGroup {
        /// The instance.
        instance: String,
        /// The group.
        group: String,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::DuplicateNode(id) => write!(f, "node {id:?} is defined twice"),
            Problem::DuplicateInstance(id) => write!(f, "instance {id:?} is defined twice"),
            Problem::BadNodeId(id) => write!(f, "node id {id:?} is not a lowercase DNS label"),
            Problem::BadInstanceId(id) => {
                write!(f, "instance id {id:?} is not a lowercase DNS label")
            }
            Problem::EmptyAgent(id) => write!(f, "node {id:?} has an empty agent address"),
            Problem::UnknownNode { instance, node } => {
                write!(f, "instance {instance:?} is on unknown node {node:?}")
            }
            Problem::EmptyTenant(id) => write!(f, "instance {id:?} has an empty tenant"),
            Problem::BadGroup { instance, group } => write!(
                f,
                "instance {instance:?} has group {group:?}, not 1 to 100 characters of \
                 a-z, A-Z, 0-9, _ and -"
            ),
        }
    }
}

fn join(problems: &[Problem]) -> String {
    let all: Vec<String> = problems.iter().map(Problem::to_string).collect();
    all.join("; ")
}

/// The syntax of an inventory file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// TOML: `[[nodes]]` and `[[instances]]` tables.
    Toml,
    /// JSON: `{"nodes": […], "instances": […]}`.
    Json,
}

impl Format {
    /// JSON for a `.json` extension (any case), TOML otherwise.
    pub fn for_path(path: &Path) -> Format {
        match path.extension().and_then(|e| e.to_str()) {
            Some(e) if e.eq_ignore_ascii_case("json") => Format::Json,
            _ => Format::Toml,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDoc {
    #[serde(default)]
    nodes: Vec<NodeEntry>,
    #[serde(default)]
    instances: Vec<InstanceEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeEntry {
    id: String,
    agent: String,
    #[serde(default)]
    hostname: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InstanceEntry {
    id: String,
    node: String,
    tenant: Option<String>,
    alias: Option<String>,
    #[serde(default)]
    groups: Vec<String>,
    image: Option<String>,
    runtime_id: Option<String>,
    source: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

/// Reads and checks an inventory file (format by [`Format::for_path`]).
pub fn load(path: &Path) -> Result<Inventory, FileError> {
    let text = std::fs::read_to_string(path).map_err(|source| FileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, Format::for_path(path), path)
}

/// Parses and checks inventory text; `path` only names the origin in errors.
pub fn parse(text: &str, format: Format, path: &Path) -> Result<Inventory, FileError> {
    let parsed = match format {
        Format::Toml => toml::from_str::<FileDoc>(text).map_err(|e| e.to_string()),
        Format::Json => serde_json::from_str::<FileDoc>(text).map_err(|e| e.to_string()),
    };
    let doc = parsed.map_err(|message| FileError::Parse {
        path: path.to_path_buf(),
        message: message.trim_end().to_string(),
    })?;
    build(doc).map_err(|problems| FileError::Invalid {
        path: path.to_path_buf(),
        problems,
    })
}

/// Turns the parsed file into an inventory, collecting every problem.
fn build(doc: FileDoc) -> Result<Inventory, Vec<Problem>> {
    let mut problems = Vec::new();
    let mut inv = Inventory::default();
    for n in doc.nodes {
        if !is_dns_label(&n.id) {
            problems.push(Problem::BadNodeId(n.id.clone()));
        }
        if n.agent.trim().is_empty() {
            problems.push(Problem::EmptyAgent(n.id.clone()));
        }
        if inv.node(&n.id).is_some() {
            problems.push(Problem::DuplicateNode(n.id));
            continue;
        }
        let node = Node {
            id: n.id,
            agent: n.agent,
            hostname: n.hostname,
        };
        inv.insert_node(node);
    }
    for i in doc.instances {
        if !is_dns_label(&i.id) {
            problems.push(Problem::BadInstanceId(i.id.clone()));
        }
        if inv.node(&i.node).is_none() {
            problems.push(Problem::UnknownNode {
                instance: i.id.clone(),
                node: i.node.clone(),
            });
        }
        if i.tenant.as_deref() == Some("") {
            problems.push(Problem::EmptyTenant(i.id.clone()));
        }
        for g in i.groups.iter().filter(|g| !is_group_name(g)) {
            problems.push(Problem::BadGroup {
                instance: i.id.clone(),
                group: g.clone(),
            });
        }
        if inv.instance(&i.id).is_some() {
            problems.push(Problem::DuplicateInstance(i.id));
            continue;
        }
        let instance = Instance {
            alias: i.alias.unwrap_or_else(|| i.id.clone()),
            runtime_id: i.runtime_id.unwrap_or_else(|| i.id.clone()),
            // A static inventory cannot know incarnations; the agent still checks the tenant.
            generation: String::new(),
            id: i.id,
            node: i.node,
            tenant: i.tenant,
            groups: i.groups,
            image: i.image,
            source: i.source.unwrap_or_else(|| DEFAULT_SOURCE.to_string()),
            labels: i.labels,
        };
        inv.insert_instance(instance);
    }
    if problems.is_empty() {
        Ok(inv)
    } else {
        Err(problems)
    }
}

/// How long after a write the file's stat is not trusted to reveal a further change.
///
/// The kernel stamps modification times from a coarse clock (a few milliseconds), so two
/// same-size writes in quick succession can leave identical metadata. Within this window
/// the watcher reads the content anyway and compares digests ("racy git" in git's terms).
const RACY_WINDOW: Duration = Duration::from_secs(2);

/// What the watcher last saw at the path: enough to tell that the file changed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    /// The file's identity and size; a rewrite, truncation or rename onto the path changes it.
    File {
        modified: Option<SystemTime>,
        len: u64,
        inode: u64,
    },
    /// `stat` failed with this error kind.
    Missing(std::io::ErrorKind),
}

impl Seen {
    /// True when the file was modified so recently (or in the future) that an identical stat
    /// does not prove identical content.
    fn racy(&self, now: SystemTime) -> bool {
        match self {
            Seen::File {
                modified: Some(m), ..
            } => now.duration_since(*m).map_or(true, |age| age < RACY_WINDOW),
            Seen::File { modified: None, .. } => true,
            Seen::Missing(_) => false,
        }
    }
}

async fn stat(path: &Path) -> Seen {
    match tokio::fs::metadata(path).await {
        Ok(m) => Seen::File {
            modified: m.modified().ok(),
            len: m.len(),
            inode: inode(&m),
        },
        Err(e) => Seen::Missing(e.kind()),
    }
}

#[cfg(unix)]
fn inode(m: &std::fs::Metadata) -> u64 {
    std::os::unix::fs::MetadataExt::ino(m)
}

#[cfg(not(unix))]
fn inode(_: &std::fs::Metadata) -> u64 {
    0
}

/// Keeps `shared` in step with the file at `path` until `shutdown` turns `true` (or its
/// sender is dropped).
///
/// Loads the file at once, then checks it every `interval` and reloads it when its
/// modification time, size or inode changed — so both in-place edits and atomic
/// rename-over replacements are seen. For a couple of seconds after a write the content
/// digest is compared too, since kernel timestamps are coarse. A good file is
/// [`Shared::publish`]ed; a missing, unreadable or invalid one is reported with
/// [`Shared::fail`] and the last good inventory stays in force. Each version is tried once:
/// an unchanged broken file is not re-reported at every tick, and rewriting identical
/// content publishes nothing.
pub async fn watch(
    path: PathBuf,
    shared: Arc<Shared>,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut watcher = Watcher {
        path,
        shared,
        seen: None,
        digest: None,
    };
    loop {
        if *shutdown.borrow_and_update() {
            break;
        }
        tokio::select! {
            _ = ticker.tick() => watcher.check().await,
            changed = shutdown.changed() => {
                if changed.is_err() {
                    break;
                }
            }
        }
    }
}

/// The state [`watch()`] carries between ticks.
struct Watcher {
    path: PathBuf,
    shared: Arc<Shared>,
    /// The stat of the last version tried.
    seen: Option<Seen>,
    /// SHA-256 of the last content tried (good or bad); `None` after a read failure.
    digest: Option<[u8; 32]>,
}

impl Watcher {
    async fn check(&mut self) {
        // Stat before reading: if the file changes between the two, the next tick sees a
        // new stat and reads it again, so no version is missed.
        let seen = stat(&self.path).await;
        if self.seen.as_ref() == Some(&seen) && !seen.racy(SystemTime::now()) {
            return;
        }
        self.seen = Some(seen);
        let text = match tokio::fs::read_to_string(&self.path).await {
            Ok(text) => text,
            Err(source) => {
                self.digest = None;
                self.reject(FileError::Read {
                    path: self.path.clone(),
                    source,
                });
                return;
            }
        };
        let digest: [u8; 32] = Sha256::digest(text.as_bytes()).into();
        if self.digest == Some(digest) {
            return;
        }
        self.digest = Some(digest);
        match parse(&text, Format::for_path(&self.path), &self.path) {
            Ok(inv) => {
                tracing::info!(
                    path = %self.path.display(),
                    instances = inv.instance_count(),
                    nodes = inv.node_count(),
                    "inventory file loaded"
                );
                self.shared.publish(inv);
            }
            Err(e) => self.reject(e),
        }
    }

    fn reject(&self, e: FileError) {
        tracing::warn!(path = %self.path.display(), error = %e, "inventory file rejected");
        self.shared.fail(e.to_string());
    }
}
