//! The text of an agent's configuration file for a test: one runc state root, no other
//! runtime, no default cgroup rules. Text rather than `AgentConfig`, so that this crate does
//! not depend on the agent; the test parses it (and can check its problems) with the agent it
//! tests.

use std::path::{Path, PathBuf};

/// An agent configuration, built up and then [rendered](AgentToml::render).
#[derive(Clone, Debug)]
pub struct AgentToml {
    node_id: String,
    listen: String,
    cert: PathBuf,
    key: PathBuf,
    client_ca: PathBuf,
    runc_root: PathBuf,
    tls_reload: Option<String>,
    rescan: Option<String>,
    extra: String,
}

impl AgentToml {
    /// Node `test-node` on `127.0.0.1:0`, serving `cert`/`key`, accepting clients of
    /// `client_ca`, watching only `runc_root`; reload and rescan intervals the agent's
    /// defaults.
    pub fn new(cert: &Path, key: &Path, client_ca: &Path, runc_root: &Path) -> AgentToml {
        AgentToml {
            node_id: "test-node".into(),
            listen: "127.0.0.1:0".into(),
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            client_ca: client_ca.to_path_buf(),
            runc_root: runc_root.to_path_buf(),
            tls_reload: None,
            rescan: None,
            extra: String::new(),
        }
    }

    /// Sets `node_id`.
    pub fn node_id(mut self, node_id: &str) -> Self {
        self.node_id = node_id.into();
        self
    }

    /// Sets `listen` (`host:port`).
    pub fn listen(mut self, listen: &str) -> Self {
        self.listen = listen.into();
        self
    }

    /// Serves this certificate and key instead.
    pub fn identity(mut self, cert: &Path, key: &Path) -> Self {
        self.cert = cert.to_path_buf();
        self.key = key.to_path_buf();
        self
    }

    /// Sets `[tls] reload_interval` (e.g. `"200ms"`).
    pub fn tls_reload(mut self, interval: &str) -> Self {
        self.tls_reload = Some(interval.into());
        self
    }

    /// Sets `[discovery] rescan_interval`; `"1h"` makes a test see changes through inotify
    /// (or a scrape that finds a container gone), never by polling.
    pub fn rescan(mut self, interval: &str) -> Self {
        self.rescan = Some(interval.into());
        self
    }

    /// TOML appended after the `[discovery]` table (further tables, e.g. `[collection]`).
    pub fn extra(mut self, toml: &str) -> Self {
        self.extra = toml.into();
        self
    }

    /// The configuration file's text.
    pub fn render(&self) -> String {
        let optional = |key: &str, value: &Option<String>| {
            value
                .as_ref()
                .map(|v| format!("{key} = \"{v}\"\n"))
                .unwrap_or_default()
        };
        format!(
            r#"node_id = "{node}"
listen = "{listen}"
[tls]
cert = "{cert}"
key = "{key}"
client_ca = "{ca}"
{reload}[discovery]
runc_roots = ["{root}"]
crun_roots = []
default_cgroup_rules = false
{rescan}{extra}
"#,
            node = self.node_id,
            listen = self.listen,
            cert = self.cert.display(),
            key = self.key.display(),
            ca = self.client_ca.display(),
            reload = optional("reload_interval", &self.tls_reload),
            root = self.runc_root.display(),
            rescan = optional("rescan_interval", &self.rescan),
            extra = self.extra,
        )
    }
}
