//! The text of a proxy's configuration file for a test, from the files [`Pki`](crate::pki::Pki)
//! writes. Text rather than `ProxyConfig`, so that this crate does not depend on the proxy;
//! the test parses it with the proxy it tests. What varies between tests (reload intervals,
//! timeouts, the inventory, limits) is added as TOML lines to the table it belongs to.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::pki::BASE;

/// A proxy configuration, built up and then [rendered](ProxyToml::render).
#[derive(Clone, Debug)]
pub struct ProxyToml {
    dir: PathBuf,
    listen: String,
    admin_listen: String,
    base_name: String,
    dns_suffix: String,
    server_cert: String,
    top: Vec<String>,
    tls: Vec<String>,
    upstream: Vec<String>,
    tables: String,
}

impl ProxyToml {
    /// A proxy on `127.0.0.1:0` (admin listener too) for [`BASE`] (base name and DNS suffix),
    /// with the files in `dir`
    /// under the names `Pki` gives them: `tenants.toml`, `server.pem`/`server-key.pem` with
    /// `tenant-ca.pem`, and towards agents `proxy.pem`/`proxy-key.pem` with
    /// `operator-ca.pem`. No inventory yet: add one with [`ProxyToml::tables`] or
    /// [`ProxyToml::agents`].
    pub fn new(dir: &Path) -> ProxyToml {
        ProxyToml {
            dir: dir.to_path_buf(),
            listen: "127.0.0.1:0".into(),
            admin_listen: "127.0.0.1:0".into(),
            base_name: BASE.into(),
            dns_suffix: BASE.into(),
            server_cert: "server".into(),
            top: Vec::new(),
            tls: Vec::new(),
            upstream: Vec::new(),
            tables: String::new(),
        }
    }

    /// Sets `listen` (`host:port`).
    pub fn listen(mut self, listen: &str) -> Self {
        self.listen = listen.into();
        self
    }

    /// Sets `admin_listen` (`host:port`).
    pub fn admin_listen(mut self, listen: &str) -> Self {
        self.admin_listen = listen.into();
        self
    }

    /// Sets `base_name` (the name discovery is served on).
    pub fn base_name(mut self, name: &str) -> Self {
        self.base_name = name.into();
        self
    }

    /// Sets `dns_suffix` (instances are `<id>.<suffix>`).
    pub fn dns_suffix(mut self, suffix: &str) -> Self {
        self.dns_suffix = suffix.into();
        self
    }

    /// Serves `<stem>.pem` and `<stem>-key.pem` instead of `server.pem`.
    pub fn server_cert(mut self, stem: &str) -> Self {
        self.server_cert = stem.into();
        self
    }

    /// Adds a top-level line, e.g. `tenants_reload_interval = "100ms"`.
    pub fn top(mut self, line: &str) -> Self {
        self.top.push(line.into());
        self
    }

    /// Adds a line to `[tls]`, e.g. `reload_interval = "100ms"`.
    pub fn tls(mut self, line: &str) -> Self {
        self.tls.push(line.into());
        self
    }

    /// Adds a line to `[upstream]`, e.g. `connect_timeout = "1s"`.
    pub fn upstream(mut self, line: &str) -> Self {
        self.upstream.push(line.into());
        self
    }

    /// Appends tables after `[upstream]` (`[inventory]`, `[limits]`, …).
    pub fn tables(mut self, toml: &str) -> Self {
        self.tables.push_str(toml);
        if !toml.ends_with('\n') {
            self.tables.push('\n');
        }
        self
    }

    /// Appends the `agents` inventory: these agents' watch streams, reconnecting with this
    /// backoff (`min`, `max`), authenticated like the upstream (`proxy.pem`, operator CA).
    pub fn agents(self, agents: &[String], backoff: (&str, &str)) -> Self {
        let list: Vec<String> = agents.iter().map(|a| format!("\"{a}\"")).collect();
        let (min, max) = backoff;
        let text = format!(
            "[inventory]\nsource = \"agents\"\nagents = [{}]\n\
             backoff = {{ min = \"{min}\", max = \"{max}\" }}\n\
             [inventory.tls]\ncert = \"{}\"\nkey = \"{}\"\nca = \"{}\"\n",
            list.join(", "),
            self.path("proxy.pem"),
            self.path("proxy-key.pem"),
            self.path("operator-ca.pem"),
        );
        self.tables(&text)
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// The configuration file's text.
    pub fn render(&self) -> String {
        let lines = |lines: &[String]| {
            lines.iter().fold(String::new(), |mut s, l| {
                let _ = writeln!(s, "{l}");
                s
            })
        };
        format!(
            r#"listen = "{listen}"
admin_listen = "{admin}"
base_name = "{base}"
dns_suffix = "{suffix}"
tenants_file = "{tenants}"
{top}[tls]
cert = "{cert}"
key = "{key}"
tenant_ca = "{tenant_ca}"
{tls}[upstream]
cert = "{proxy}"
key = "{proxy_key}"
ca = "{operator_ca}"
{upstream}{tables}"#,
            listen = self.listen,
            admin = self.admin_listen,
            base = self.base_name,
            suffix = self.dns_suffix,
            tenants = self.path("tenants.toml"),
            top = lines(&self.top),
            cert = self.path(&format!("{}.pem", self.server_cert)),
            key = self.path(&format!("{}-key.pem", self.server_cert)),
            tenant_ca = self.path("tenant-ca.pem"),
            tls = lines(&self.tls),
            proxy = self.path("proxy.pem"),
            proxy_key = self.path("proxy-key.pem"),
            operator_ca = self.path("operator-ca.pem"),
            upstream = lines(&self.upstream),
            tables = self.tables,
        )
    }
}
