//! Real containers and network namespaces for integration tests of every crate.
//!
//! Needs root (euid 0), `runc` (Debian package `runc`), a static busybox at
//! `/usr/bin/busybox` (package `busybox-static`) and `ip` (package `iproute2`).
//! When anything is missing it fails loudly: it panics with a message naming
//! the package to install. It never skips a test.
//!
//! Isolation: every [`Runc`] has a private runc state root and bundle dir in a
//! temp dir named `lookout-test-<pid>-*`, its containers live in cgroups under
//! `/lookout-test-<pid>-<n>/`, and every [`NetPair`] uses namespaces named
//! `lkt-<pid>-<n>-{a,b}`, so parallel tests and test binaries never collide.
//! Everything is removed on drop, also when a test panics; leftovers of
//! crashed runs (dead `<pid>`) are removed by [`cleanup_stale`], which runs once
//! per process when the first [`Runc`] or [`NetPair`] is made.

use std::collections::HashSet;
use std::fs;
use std::io::{Read, Seek};
use std::net::Ipv4Addr;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Once, OnceLock, PoisonError};
use std::thread::sleep;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tempfile::TempDir;

/// How long [`Container::exec`] and the [`NetPair`] exec helpers may run before being killed.
pub const EXEC_TIMEOUT: Duration = Duration::from_secs(60);
const SHORT_TIMEOUT: Duration = Duration::from_secs(30);
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
const CGROUP_PREFIX: &str = "lookout-test-";
const NETNS_PREFIX: &str = "lkt-";
const PING_PAYLOAD: usize = 1400;

static COUNTER: AtomicU32 = AtomicU32::new(0);
static STALE_ONCE: Once = Once::new();

/// A runc instance with its own state root (`runc --root <tmp>/state`) and bundle dir.
///
/// Containers it starts keep its temp dir alive, so they may outlive it.
pub struct Runc {
    inner: Arc<RuncInner>,
}

struct RuncInner {
    runc: PathBuf,
    dir: TempDir,
    state: PathBuf,
    cgroup_parent: String,
    ids: Mutex<HashSet<String>>,
}

/// What to run in a container; build with [`ContainerSpec::new`] and the chainable setters.
#[derive(Clone, Debug)]
pub struct ContainerSpec {
    /// Container id, unique per [`Runc`]: 1-64 chars of `[A-Za-z0-9_.+-]`.
    pub id: String,
    /// Process args; default `["sleep", "3600"]`.
    pub args: Vec<String>,
    /// `linux.resources.memory.limit` in bytes.
    pub memory_limit: Option<u64>,
    /// `linux.resources.memory.swap` (memory + swap, bytes; -1 = unlimited).
    pub memory_swap: Option<i64>,
    /// `linux.resources.cpu.quota` and `.period` (µs).
    pub cpu_quota: Option<(i64, u64)>,
    /// `linux.resources.cpu.cpus`, e.g. `"0"` or `"0-1"`.
    pub cpuset_cpus: Option<String>,
    /// Mount a tmpfs of this many bytes as the rootfs.
    pub rootfs_tmpfs_bytes: Option<u64>,
    /// OCI annotations.
    pub annotations: Vec<(String, String)>,
    /// Hostname; default: the id.
    pub hostname: Option<String>,
    /// Join this network namespace (e.g. [`NetPair::ns_a_path`]) instead of a new one.
    pub netns: Option<PathBuf>,
    /// Host directories bind-mounted into the container: `(host source, container path)`.
    pub binds: Vec<(PathBuf, String)>,
}

/// A running container; killed, deleted and cleaned up on [`Container::remove`] or drop.
pub struct Container {
    inner: Arc<RuncInner>,
    id: String,
    bundle: PathBuf,
    cgroup_path: String,
    tmpfs: Option<PathBuf>,
    removed: bool,
}

/// Two network namespaces `a` and `b` joined by a veth pair (`veth0` in a, `veth1` in b).
pub struct NetPair {
    a: String,
    b: String,
    n: u8,
}

impl Runc {
    /// Checks root, runc and busybox-static (panics naming the package) and makes the temp dirs.
    pub fn new() -> Runc {
        require_root();
        let runc = tool("runc", "runc");
        busybox();
        tool("mount", "mount");
        STALE_ONCE.call_once(cleanup_stale);
        let dir = tempfile::Builder::new()
            .prefix(&format!("{CGROUP_PREFIX}{}-", std::process::id()))
            .tempdir()
            .expect("create runc temp dir");
        let state = dir.path().join("state");
        fs::create_dir_all(&state).expect("create runc state dir");
        let cgroup_parent = format!("{CGROUP_PREFIX}{}-{}", std::process::id(), next_n());
        let ids = Mutex::new(HashSet::new());
        Runc {
            inner: Arc::new(RuncInner {
                runc,
                dir,
                state,
                cgroup_parent,
                ids,
            }),
        }
    }

    /// The private runc state root (`--root`).
    pub fn state_root(&self) -> &Path {
        &self.inner.state
    }

    /// Builds a bundle for `spec`, starts it detached and waits (up to 10 s) until runc reports
    /// it running, so the process must not exit by itself. Panics on any failure.
    pub fn run(&self, spec: ContainerSpec) -> Container {
        let id = spec.id.clone();
        let valid = id.len() <= 64
            && !matches!(id.as_str(), "" | "." | "..")
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.+-".contains(c));
        assert!(
            valid,
            "invalid container id {id:?}: use 1-64 chars of [A-Za-z0-9_.+-]"
        );
        let fresh = lock_ids(&self.inner).insert(id.clone());
        assert!(fresh, "container id {id:?} is already in use in this Runc");
        let bundle = self.inner.dir.path().join("bundles").join(&id);
        let rootfs = bundle.join("rootfs");
        fs::create_dir_all(&rootfs).expect("create rootfs dir");
        // Made first, so that its Drop cleans up whatever the steps below leave.
        let mut c = Container {
            inner: Arc::clone(&self.inner),
            cgroup_path: format!("/{}/{id}", self.inner.cgroup_parent),
            id,
            bundle,
            tmpfs: None,
            removed: false,
        };
        if let Some(bytes) = spec.rootfs_tmpfs_bytes {
            let size = format!("size={bytes}");
            let mut mount = Command::new(tool("mount", "mount"));
            check(
                mount
                    .args(["-t", "tmpfs", "-o", &size, "tmpfs"])
                    .arg(&rootfs),
            );
            c.tmpfs = Some(rootfs.clone());
        }
        populate_rootfs(&rootfs);
        write_config(&self.inner, &c, &spec);
        let mut run = c.runc();
        run.args(["run", "-d", "--bundle"])
            .arg(&c.bundle)
            .arg(&c.id);
        // Null stdio: `runc run -d` hands its stdio to the container, so a pipe would never close.
        let out = run_bounded(&mut run, EXEC_TIMEOUT, false);
        assert!(
            out.status.success(),
            "runc run {} failed ({}): {}",
            c.id,
            out.status,
            c.log()
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while c.state()["status"] != "running" {
            assert!(
                Instant::now() < deadline,
                "container {} not running: {}",
                c.id,
                c.state()
            );
            sleep(Duration::from_millis(20));
        }
        c
    }
}

impl Default for Runc {
    fn default() -> Self {
        Runc::new()
    }
}

impl Default for NetPair {
    fn default() -> Self {
        NetPair::new()
    }
}

impl Drop for RuncInner {
    fn drop(&mut self) {
        for hierarchy in cgroup_hierarchies() {
            if let Err(e) = remove_cgroup(&hierarchy.join(&self.cgroup_parent)) {
                eprintln!("containers: {e}");
            }
        }
    }
}

impl ContainerSpec {
    /// A spec running `sleep 3600` with no limits.
    pub fn new(id: &str) -> ContainerSpec {
        ContainerSpec {
            id: id.to_string(),
            args: vec!["sleep".into(), "3600".into()],
            memory_limit: None,
            memory_swap: None,
            cpu_quota: None,
            cpuset_cpus: None,
            rootfs_tmpfs_bytes: None,
            annotations: Vec::new(),
            hostname: None,
            netns: None,
            binds: Vec::new(),
        }
    }
    /// Sets the process args.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args = args.iter().map(ToString::to_string).collect();
        self
    }
    /// Sets the memory limit in bytes.
    pub fn memory_limit(mut self, bytes: u64) -> Self {
        self.memory_limit = Some(bytes);
        self
    }
    /// Sets the memory + swap limit in bytes (-1 = unlimited).
    pub fn memory_swap(mut self, bytes: i64) -> Self {
        self.memory_swap = Some(bytes);
        self
    }
    /// Sets the CFS quota and period in microseconds.
    pub fn cpu_quota(mut self, quota: i64, period: u64) -> Self {
        self.cpu_quota = Some((quota, period));
        self
    }
    /// Sets the cpuset CPUs, e.g. `"0"`.
    pub fn cpuset_cpus(mut self, cpus: &str) -> Self {
        self.cpuset_cpus = Some(cpus.to_string());
        self
    }
    /// Puts the rootfs on a tmpfs of `bytes` bytes.
    pub fn rootfs_tmpfs_bytes(mut self, bytes: u64) -> Self {
        self.rootfs_tmpfs_bytes = Some(bytes);
        self
    }
    /// Adds an OCI annotation.
    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        self.annotations.push((key.to_string(), value.to_string()));
        self
    }
    /// Sets the hostname.
    pub fn hostname(mut self, hostname: &str) -> Self {
        self.hostname = Some(hostname.to_string());
        self
    }
    /// Bind-mounts host directory `source` at `dest` inside the container.
    pub fn bind(mut self, source: impl Into<PathBuf>, dest: &str) -> Self {
        self.binds.push((source.into(), dest.to_string()));
        self
    }

    /// Joins the network namespace at `path` (must exist).
    pub fn netns(mut self, path: impl Into<PathBuf>) -> Self {
        self.netns = Some(path.into());
        self
    }
}

impl Container {
    /// The container id.
    pub fn id(&self) -> &str {
        &self.id
    }
    /// The bundle dir (holds `config.json`, `rootfs/` and `runc.log`).
    pub fn bundle(&self) -> &Path {
        &self.bundle
    }
    /// The `linux.cgroupsPath` used, e.g. `/lookout-test-123-0/web`.
    pub fn cgroup_relative_path(&self) -> String {
        self.cgroup_path.clone()
    }
    /// The container's cgroup dir for a v1 controller, e.g. `cgroup_dir("memory")`.
    pub fn cgroup_dir(&self, controller: &str) -> PathBuf {
        Path::new(CGROUP_ROOT)
            .join(controller)
            .join(&self.cgroup_path[1..])
    }
    /// `runc state` as JSON; panics if runc fails.
    pub fn state(&self) -> Value {
        let out = check(self.runc().args(["state", &self.id]));
        serde_json::from_slice(&out.stdout).expect("runc state prints JSON")
    }
    /// runc's own `state.json` for the container (what the agent reads), as JSON.
    pub fn state_file(&self) -> Value {
        let path = self.inner.state.join(&self.id).join("state.json");
        let bytes = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        serde_json::from_slice(&bytes).expect("runc's state.json is JSON")
    }
    /// The host pid of the container's init process.
    pub fn pid(&self) -> u32 {
        let pid = self.state()["pid"]
            .as_u64()
            .expect("runc state has a numeric pid");
        u32::try_from(pid).expect("pid fits in u32")
    }
    /// Runs `args` in the container (no tty) and returns its output; it is killed after
    /// [`EXEC_TIMEOUT`], and then the status is a failure and stderr says so.
    ///
    /// runc relays the output through pipes and returns only when every process holding
    /// them has closed them: redirect a background child (`sleep 9 >/dev/null 2>&1 &`)
    /// or use [`Container::exec_detached`].
    pub fn exec(&self, args: &[&str]) -> Output {
        run_bounded(
            self.runc().args(["exec", &self.id]).args(args),
            EXEC_TIMEOUT,
            true,
        )
    }
    /// Starts `args` in the background (`runc exec -d`, stdio null) and returns its host pid.
    pub fn exec_detached(&self, args: &[&str]) -> u32 {
        let pid_file = self.bundle.join(format!("exec-{}.pid", next_n()));
        let mut cmd = self.runc();
        cmd.args(["exec", "-d", "--pid-file"])
            .arg(&pid_file)
            .arg(&self.id)
            .args(args);
        let out = run_bounded(&mut cmd, EXEC_TIMEOUT, false);
        assert!(
            out.status.success(),
            "runc exec -d {args:?} failed: {}",
            self.log()
        );
        let pid = fs::read_to_string(&pid_file).expect("runc exec -d writes its pid file");
        pid.trim().parse().expect("pid file holds a number")
    }
    /// Kills and deletes the container, unmounts its tmpfs and removes its dirs; panics on failure.
    pub fn remove(mut self) {
        let errors = self.teardown();
        assert!(
            errors.is_empty(),
            "removing container {}: {}",
            self.id,
            errors.join("; ")
        );
    }

    fn runc(&self) -> Command {
        let mut cmd = Command::new(&self.inner.runc);
        cmd.arg("--root")
            .arg(&self.inner.state)
            .arg("--log")
            .arg(self.bundle.join("runc.log"));
        cmd
    }

    fn log(&self) -> String {
        fs::read_to_string(self.bundle.join("runc.log")).unwrap_or_default()
    }

    fn teardown(&mut self) -> Vec<String> {
        if std::mem::replace(&mut self.removed, true) {
            return Vec::new();
        }
        let mut errors = Vec::new();
        run_bounded(
            self.runc().args(["kill", "--all", &self.id, "KILL"]),
            SHORT_TIMEOUT,
            true,
        );
        let del = run_bounded(
            self.runc().args(["delete", "--force", &self.id]),
            SHORT_TIMEOUT,
            true,
        );
        let state = run_bounded(self.runc().args(["state", &self.id]), SHORT_TIMEOUT, true);
        if state.status.success() {
            errors.push(format!(
                "runc delete failed: {}",
                String::from_utf8_lossy(&del.stderr)
            ));
        }
        if let Some(rootfs) = self.tmpfs.take() {
            let umount = |extra: &[&str]| {
                let mut cmd = Command::new(tool("umount", "mount"));
                run_bounded(cmd.args(extra).arg(&rootfs), SHORT_TIMEOUT, true)
                    .status
                    .success()
            };
            if !retry(|| umount(&[])) && !umount(&["-l"]) {
                errors.push(format!("cannot unmount {}", rootfs.display()));
            }
        }
        if let Err(e) = fs::remove_dir_all(&self.bundle) {
            errors.push(format!("remove {}: {e}", self.bundle.display()));
        }
        for hierarchy in cgroup_hierarchies() {
            if let Err(e) = remove_cgroup(&hierarchy.join(&self.cgroup_path[1..])) {
                errors.push(e);
            }
        }
        lock_ids(&self.inner).remove(&self.id);
        errors
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        for e in self.teardown() {
            eprintln!("containers: cleaning up {}: {e}", self.id);
        }
    }
}

impl NetPair {
    /// Creates the namespaces, the veth pair, addresses 10.213.n.1/30 (a) and .2/30 (b), links up.
    pub fn new() -> NetPair {
        require_root();
        busybox();
        STALE_ONCE.call_once(cleanup_stale);
        let (pid, k) = (std::process::id(), next_n());
        let [n, ..] = pid.wrapping_mul(31).wrapping_add(k).to_le_bytes(); // mod 256
        let name = |side: &str| format!("{NETNS_PREFIX}{pid}-{k}-{side}");
        // Made first, so that its Drop deletes whatever the steps below create.
        let pair = NetPair {
            a: name("a"),
            b: name("b"),
            n,
        };
        let (a, b) = (pair.a.as_str(), pair.b.as_str());
        let (ip_a, ip_b) = (format!("{}/30", pair.ip_a()), format!("{}/30", pair.ip_b()));
        let steps: [&[&str]; 9] = [
            &["netns", "add", a],
            &["netns", "add", b],
            &[
                "-n", a, "link", "add", "veth0", "type", "veth", "peer", "name", "veth1", "netns",
                b,
            ],
            &["-n", a, "addr", "add", &ip_a, "dev", "veth0"],
            &["-n", b, "addr", "add", &ip_b, "dev", "veth1"],
            &["-n", a, "link", "set", "lo", "up"],
            &["-n", b, "link", "set", "lo", "up"],
            &["-n", a, "link", "set", "veth0", "up"],
            &["-n", b, "link", "set", "veth1", "up"],
        ];
        for step in steps {
            check(Command::new(tool("ip", "iproute2")).args(step));
        }
        pair
    }
    /// `/run/netns/<a>`, for [`ContainerSpec::netns`].
    pub fn ns_a_path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.a)
    }
    /// `/run/netns/<b>`.
    pub fn ns_b_path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.b)
    }
    /// Address of `veth0` in namespace a: 10.213.n.1.
    pub fn ip_a(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, self.n, 1)
    }
    /// Address of `veth1` in namespace b: 10.213.n.2.
    pub fn ip_b(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, self.n, 2)
    }
    /// Runs `args` on the host inside namespace a (`ip netns exec`), bounded by [`EXEC_TIMEOUT`].
    pub fn exec_in_a(&self, args: &[&str]) -> Output {
        Self::exec_in(&self.a, args)
    }
    /// Runs `args` on the host inside namespace b (`ip netns exec`), bounded by [`EXEC_TIMEOUT`].
    pub fn exec_in_b(&self, args: &[&str]) -> Output {
        Self::exec_in(&self.b, args)
    }
    /// Pings a's address from b with 1400-byte payloads until at least `bytes` bytes of echo
    /// requests have been answered, so a's rx counters rise by at least `bytes`; panics if not.
    /// Adaptive (`-A`: next ping on reply), so ~100 MB/s; bounded in count and time (10 s plus
    /// 1 s per 1.4 MB); the traffic never leaves the two namespaces.
    pub fn send_burst_to_a(&self, bytes: usize) {
        let needed = bytes.div_ceil(PING_PAYLOAD).max(1);
        let (count, deadline) = ((needed + 2).to_string(), (10 + needed / 1000).to_string());
        let size = PING_PAYLOAD.to_string();
        let busybox = busybox().to_string_lossy().into_owned();
        let ip_a = self.ip_a().to_string();
        let out = self.exec_in_b(&[
            &busybox, "ping", "-q", "-A", "-c", &count, "-s", &size, "-i", "0.01", "-W", "1", "-w",
            &deadline, &ip_a,
        ]);
        let text = String::from_utf8_lossy(&out.stdout);
        let received = text
            .split(',')
            .find_map(|part| part.trim().strip_suffix(" packets received"))
            .and_then(|n| n.parse::<usize>().ok());
        assert!(
            received.is_some_and(|r| r >= needed),
            "ping burst to {ip_a}: {needed} replies needed; {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn exec_in(ns: &str, args: &[&str]) -> Output {
        let mut cmd = Command::new(tool("ip", "iproute2"));
        run_bounded(
            cmd.args(["netns", "exec", ns]).args(args),
            EXEC_TIMEOUT,
            true,
        )
    }
}

impl Drop for NetPair {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            if let Err(e) = delete_netns(ns) {
                eprintln!("containers: {e}");
            }
        }
    }
}

/// Removes leftovers of crashed test processes (dead `<pid>`): cgroups `lookout-test-<pid>-*`
/// (killing what is left in them), tmpfs mounts and temp dirs `lookout-test-<pid>-*`, and
/// network namespaces `lkt-<pid>-*`. Leaves those of live processes alone.
pub fn cleanup_stale() {
    for hierarchy in cgroup_hierarchies() {
        for dir in stale_entries(&hierarchy, CGROUP_PREFIX) {
            if let Err(e) = remove_cgroup(&dir) {
                eprintln!("containers: stale: {e}");
            }
        }
    }
    let tmp = std::env::temp_dir();
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for dir in stale_entries(&tmp, CGROUP_PREFIX) {
        let prefix = format!("{}/", dir.display());
        for target in mounts.lines().filter_map(|l| l.split(' ').nth(4)) {
            if target.starts_with(&prefix) {
                let mut umount = Command::new(tool("umount", "mount"));
                run_bounded(umount.arg("-l").arg(target), SHORT_TIMEOUT, true);
            }
        }
        if let Err(e) = fs::remove_dir_all(&dir) {
            eprintln!("containers: stale: remove {}: {e}", dir.display());
        }
    }
    for ns in stale_entries(Path::new("/run/netns"), NETNS_PREFIX) {
        let name = ns
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if let Err(e) = delete_netns(&name) {
            eprintln!("containers: stale: {e}");
        }
    }
}

fn next_n() -> u32 {
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

fn lock_ids(inner: &RuncInner) -> MutexGuard<'_, HashSet<String>> {
    // A panic while holding the lock cannot leave the set inconsistent.
    inner.ids.lock().unwrap_or_else(PoisonError::into_inner)
}

fn require_root() {
    let status = fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let euid = status.lines().find_map(|l| l.strip_prefix("Uid:"));
    let euid = euid.and_then(|ids| ids.split_whitespace().nth(1));
    assert_eq!(euid, Some("0"), "container tests must run as root (euid 0)");
}

/// Finds `name` in PATH or the sbin/bin dirs, else panics naming the package.
fn tool(name: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("`{name}` not found: apt-get install {package}"))
}

/// The static busybox binary; panics unless busybox-static is installed.
fn busybox() -> &'static Path {
    static BUSYBOX: OnceLock<PathBuf> = OnceLock::new();
    BUSYBOX.get_or_init(|| {
        let path = ["/usr/bin/busybox", "/bin/busybox"]
            .map(PathBuf::from)
            .into_iter();
        let found = path.filter(|p| p.is_file()).find(|p| is_static_elf(p));
        found.expect("no static busybox at /usr/bin/busybox: apt-get install busybox-static")
    })
}

/// True for a 64-bit ELF without a `PT_INTERP` (dynamic loader) program header.
fn is_static_elf(path: &Path) -> bool {
    let Ok(elf) = fs::read(path) else {
        return false;
    };
    let num = |at: usize, len: usize| {
        let bytes = elf.get(at..at.saturating_add(len)).unwrap_or(&[]);
        bytes
            .iter()
            .rev()
            .fold(0usize, |acc, b| acc << 8 | usize::from(*b))
    };
    if elf.len() < 64 || &elf[..5] != b"\x7fELF\x02" {
        return false;
    }
    let (phoff, phentsize, phnum) = (num(0x20, 8), num(0x36, 2), num(0x38, 2));
    (0..phnum).all(|i| num(phoff.saturating_add(i.saturating_mul(phentsize)), 4) != 3)
}

fn populate_rootfs(rootfs: &Path) {
    static APPLETS: OnceLock<Vec<String>> = OnceLock::new();
    let applets = APPLETS.get_or_init(|| {
        let out = check(Command::new(busybox()).arg("--list"));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    });
    for dir in ["bin", "proc", "sys", "dev", "tmp", "etc", "root"] {
        fs::create_dir_all(rootfs.join(dir)).expect("create rootfs dir");
    }
    let tmp = fs::Permissions::from_mode(0o1777);
    fs::set_permissions(rootfs.join("tmp"), tmp).expect("chmod rootfs /tmp");
    fs::copy(busybox(), rootfs.join("bin/busybox")).expect("copy busybox into rootfs");
    for applet in applets.iter().filter(|a| a.as_str() != "busybox") {
        symlink("busybox", rootfs.join("bin").join(applet)).expect("symlink busybox applet");
    }
    fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").expect("etc/passwd");
    fs::write(rootfs.join("etc/group"), "root:x:0:\n").expect("write etc/group");
}

fn write_config(inner: &RuncInner, c: &Container, spec: &ContainerSpec) {
    check(
        Command::new(&inner.runc)
            .args(["spec", "--bundle"])
            .arg(&c.bundle),
    );
    let path = c.bundle.join("config.json");
    let text = fs::read_to_string(&path).expect("read config.json");
    let mut cfg: Value = serde_json::from_str(&text).expect("runc spec writes JSON");
    cfg["process"]["terminal"] = json!(false);
    cfg["process"]["args"] = json!(spec.args);
    cfg["root"]["readonly"] = json!(false);
    // Like Docker's default set, so that busybox ping works inside.
    for set in ["bounding", "effective", "permitted"] {
        let caps = cfg["process"]["capabilities"][set].as_array_mut();
        caps.expect("runc spec lists capabilities")
            .push(json!("CAP_NET_RAW"));
    }
    cfg["hostname"] = json!(spec.hostname.as_deref().unwrap_or(&spec.id));
    if let Some(mounts) = cfg["mounts"].as_array_mut() {
        for (source, dest) in &spec.binds {
            mounts.push(json!({"destination": dest, "type": "bind", "source": source, "options": ["rbind", "rw"]}));
        }
    }
    let annotations = spec.annotations.iter().map(|(k, v)| (k.clone(), json!(v)));
    cfg["annotations"] = Value::Object(annotations.collect());
    let linux = &mut cfg["linux"];
    linux["cgroupsPath"] = json!(c.cgroup_path);
    let res = &mut linux["resources"];
    if let Some(limit) = spec.memory_limit {
        res["memory"]["limit"] = json!(limit);
    }
    if let Some(swap) = spec.memory_swap {
        res["memory"]["swap"] = json!(swap);
    }
    if let Some((quota, period)) = spec.cpu_quota {
        res["cpu"]["quota"] = json!(quota);
        res["cpu"]["period"] = json!(period);
    }
    if let Some(cpus) = &spec.cpuset_cpus {
        res["cpu"]["cpus"] = json!(cpus);
    }
    if let Some(ns) = &spec.netns {
        assert!(
            ns.exists(),
            "network namespace {} does not exist",
            ns.display()
        );
        let namespaces = linux["namespaces"]
            .as_array_mut()
            .expect("runc spec has namespaces");
        for entry in namespaces.iter_mut().filter(|e| e["type"] == "network") {
            *entry = json!({ "type": "network", "path": ns });
        }
    }
    let text = serde_json::to_string_pretty(&cfg).expect("serialize config.json");
    fs::write(&path, text).expect("write config.json");
}

/// Runs `cmd` with stdin null, killing it after `timeout`. With `capture`, stdout and stderr go
/// to temp files (not pipes, which a leftover background child could hold open forever).
fn run_bounded(cmd: &mut Command, timeout: Duration, capture: bool) -> Output {
    let files = capture.then(|| {
        let new = || tempfile::tempfile().expect("create temp file for output");
        (new(), new())
    });
    let stdio = |f: Option<&fs::File>| match f {
        Some(f) => Stdio::from(f.try_clone().expect("clone temp file handle")),
        None => Stdio::null(),
    };
    cmd.stdin(Stdio::null())
        .stdout(stdio(files.as_ref().map(|f| &f.0)))
        .stderr(stdio(files.as_ref().map(|f| &f.1)));
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn {cmd:?}: {e}"));
    let deadline = Instant::now() + timeout;
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for child") {
            break status;
        }
        if Instant::now() >= deadline {
            timed_out = true;
            // Err only if it exited meanwhile; wait() below reaps it either way.
            let _ = child.kill();
            break child.wait().expect("wait for killed child");
        }
        sleep(Duration::from_millis(5));
    };
    let read = |mut f: fs::File| {
        let mut buf = Vec::new();
        f.rewind()
            .and_then(|()| f.read_to_end(&mut buf))
            .expect("read temp output file");
        buf
    };
    let (stdout, mut stderr) = files.map_or_else(Default::default, |(o, e)| (read(o), read(e)));
    if timed_out {
        stderr.extend(format!("\ncontainers: {cmd:?} killed after {timeout:?}\n").bytes());
    }
    Output {
        status,
        stdout,
        stderr,
    }
}

/// [`run_bounded`] with capture, panicking with the output unless it succeeds.
fn check(cmd: &mut Command) -> Output {
    let out = run_bounded(cmd, SHORT_TIMEOUT, true);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {stdout}{stderr}",
        out.status
    );
    out
}

/// Calls `f` until it returns true, for up to 5 s.
fn retry(mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        sleep(Duration::from_millis(50));
    }
}

/// Every mounted cgroup hierarchy: `/sys/fs/cgroup` itself on pure v2, else its subdirs.
fn cgroup_hierarchies() -> Vec<PathBuf> {
    let root = Path::new(CGROUP_ROOT);
    if root.join("cgroup.procs").exists() {
        return vec![root.to_path_buf()];
    }
    let entries = fs::read_dir(root).into_iter().flatten().flatten();
    let dirs = entries.filter(|e| e.file_type().is_ok_and(|t| t.is_dir()));
    dirs.map(|e| e.path())
        .filter(|p| p.join("cgroup.procs").exists())
        .collect()
}

/// Removes a cgroup and its children, killing any process left in them.
fn remove_cgroup(dir: &Path) -> Result<(), String> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(());
    };
    for child in entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
    {
        remove_cgroup(&child.path())?;
    }
    let removed = retry(|| {
        let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.split_whitespace() {
            run_bounded(
                Command::new(busybox()).args(["kill", "-9", pid]),
                SHORT_TIMEOUT,
                true,
            );
        }
        fs::remove_dir(dir).is_ok() || !dir.exists()
    });
    removed
        .then_some(())
        .ok_or_else(|| format!("cannot remove cgroup {}", dir.display()))
}

fn delete_netns(name: &str) -> Result<(), String> {
    let mut cmd = Command::new(tool("ip", "iproute2"));
    let out = run_bounded(cmd.args(["netns", "delete", name]), SHORT_TIMEOUT, true);
    let gone = !Path::new("/run/netns").join(name).exists();
    (out.status.success() || gone).then_some(()).ok_or_else(|| {
        format!(
            "ip netns delete {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Entries of `dir` named `<prefix><pid>-*` whose pid is no longer running.
fn stale_entries(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let entries = fs::read_dir(dir).into_iter().flatten().flatten();
    let stale = entries.filter(|e| {
        let name = e.file_name().to_string_lossy().into_owned();
        let pid = name
            .strip_prefix(prefix)
            .and_then(|rest| rest.split('-').next());
        let pid = pid.and_then(|p| p.parse::<u32>().ok());
        pid.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
    });
    stale.map(|e| e.path()).collect()
}
