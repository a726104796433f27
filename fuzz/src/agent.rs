//! Fuzz harnesses for the agent's parsers of kernel-supplied and client-supplied bytes.
//!
//! Each `pub fn` here takes the raw bytes of one fuzz input, hands them to a group of parsers
//! and asserts what those parsers promise. A panic — from a parser or from an assertion — is
//! a finding. The `fuzz_targets/*.rs` binaries are one-line wrappers around these functions,
//! and `agent/tests/parsers_never_panic.rs` includes this very file (`#[path]`) to run the
//! same checks on stable Rust, in CI, over the seed corpora plus deterministic mutations. So
//! an invariant added here is enforced in both places. It may therefore use only crates the
//! agent's tests can: `lookout-agent`, `lookout-discovery` and their dependencies.
//!
//! Text parsers get the bytes through [`String::from_utf8_lossy`]: the agent reads kernel
//! files with `read_to_string`, which rejects invalid UTF-8, so lossy decoding covers every
//! string the agent can see (and more). JSON parsers get the raw bytes, as the agent does.
//!
//! Everything here is pure: nothing touches the filesystem (`CgroupPaths::from_proc` and
//! `AgentConfig::problems` do, and are left out; the state-file reader reads a simulated
//! file).

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use lookout_agent::cgroup::{v1, v2, CgroupPaths, CpuLimit};
use lookout_agent::config::{AgentConfig, LabelKeys};
use lookout_agent::exposition::Format;
use lookout_agent::render::Selection;
use lookout_agent::source::{crun, runc, Discovered};
use lookout_agent::{
    container, filesystem, host, kernel_file, mountinfo, netdev, pressure, process, server,
};
use lookout_discovery::{instance_id_for, is_dns_label};

/// Most CPUs one `a-b` range of a CPU list may name (`cpu_list_count` rejects wider ones).
const MAX_CPUS_PER_RANGE: usize = (1 << 16) + 1;

fn text(data: &[u8]) -> Cow<'_, str> {
    String::from_utf8_lossy(data)
}

/// Lines that are not empty after `str::trim`, as the mountinfo and io.stat parsers count them.
fn non_blank_lines(t: &str) -> usize {
    t.lines().filter(|l| !l.trim().is_empty()).count()
}

/// procfs files read from the host for each container's init process: `/proc/<pid>/stat`,
/// `/proc/<pid>/cgroup`, `/proc/<pid>/net/dev`, `/proc/<pid>/mountinfo` (then the
/// node_exporter mount filter), and the host's `/proc/meminfo`.
pub fn procfs(data: &[u8]) {
    let t = text(data);

    if let Some(st) = process::parse_stat(&t) {
        assert!(t.contains(')'), "stat parsed without a ')'");
        assert!(
            st.state != b')' && !st.state.is_ascii_whitespace(),
            "state byte {:#04x} is not a field's first byte",
            st.state
        );
    }

    if let Some(lines) = process::parse_cgroup(&t) {
        assert_eq!(
            lines.len(),
            t.lines().filter(|l| !l.is_empty()).count(),
            "an Ok cgroup file has one entry per non-empty line"
        );
        for l in &lines {
            assert!(l.path.starts_with('/'), "cgroup path {:?}", l.path);
            assert!(
                l.controllers
                    .iter()
                    .all(|c| !c.is_empty() && !c.contains(',')),
                "controllers {:?}",
                l.controllers
            );
        }
    }

    if let Ok(devs) = netdev::parse(&t) {
        assert!(
            devs.len() <= t.lines().count().saturating_sub(2),
            "at most one device per line after the two header lines"
        );
        let mut names: Vec<&str> = devs.iter().map(|d| d.device.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), devs.len(), "device names are unique");
        for d in &devs {
            assert!(
                !d.device.contains(':'),
                "device name {:?} has a ':'",
                d.device
            );
            // The kernel's whitespace is ASCII (`isspace`); names are bytes otherwise.
            assert_eq!(d.device, d.device.trim_ascii(), "device name is trimmed");
        }
    }
    // Bytes that are not UTF-8 in a name never fail the file (they are escaped).
    if let Ok(devs) = netdev::parse_bytes(data) {
        for d in devs.iter().filter(|d| d.escaped) {
            assert!(d.device.contains("\\x"), "escaped name {:?}", d.device);
        }
    }

    if let Ok(mounts) = mountinfo::parse(&t) {
        assert_eq!(mounts.len(), non_blank_lines(&t), "one mount per line");
        for m in &mounts {
            let _ = filesystem::wanted(m);
        }
    }

    let mem = host::parse_meminfo(&t);
    assert!(mem.len() <= t.lines().count());
    for (name, _) in &mem {
        assert!(!name.contains(':'), "meminfo field {name:?} has a ':'");
        assert_eq!(name, name.trim(), "meminfo field name is trimmed");
    }
}

/// cgroupfs and PSI files: `cpu.pressure` & co. (and `/proc/pressure/*`), v2 `io.stat`,
/// v1 `blkio.throttle.*`, every flat-keyed file (`cpu.stat`, `memory.stat`, `memory.events`,
/// `cpuacct.stat`), and the one-value files (`memory.max`, `pids.max`, `cpu.max`,
/// `cpuset.cpus.effective`, `MAJ:MIN`), which are tried on the whole input, on each line and
/// on each whitespace-separated token.
pub fn cgroupfs(data: &[u8]) {
    let t = text(data);

    if let Ok(s) = pressure::parse(&t) {
        assert!(
            s.some_us.is_some() || s.full_us.is_some(),
            "Ok PSI without a total"
        );
    }

    if let Ok(devs) = v2::parse_io_stat(&t) {
        assert_eq!(
            devs.len(),
            non_blank_lines(&t),
            "one device per io.stat line"
        );
    }

    if let Ok(lines) = v1::parse_blkio(&t) {
        assert!(lines.len() <= t.lines().count());
        for (_, op, _) in &lines {
            assert!(
                !op.is_empty() && !op.contains(|c: char| c.is_ascii_whitespace()),
                "blkio op {op:?}"
            );
        }
    }

    let keyed: Vec<(&str, u64)> = kernel_file::flat_keyed(&t).collect();
    assert!(keyed.len() <= t.lines().count());
    for (k, _) in &keyed {
        assert!(
            !k.is_empty() && !k.contains(|c: char| c.is_ascii_whitespace()),
            "flat-keyed key {k:?}"
        );
    }

    let values = std::iter::once(t.as_ref())
        .chain(t.lines())
        .chain(t.split_ascii_whitespace());
    for v in values {
        one_value(v);
    }
}

/// The single-value parsers on one candidate value, and what the agent derives from them.
fn one_value(v: &str) {
    // The agent trims before `parse_limit` (`read_limit`); the others get the file as is.
    if let Some(Some(n)) = kernel_file::parse_limit(v.trim()) {
        assert!(
            n < 1 << 62,
            "v1 'unlimited' sentinel {n} returned as a limit"
        );
    }

    let quota = v2::parse_cpu_max(v);
    if let Some(q) = quota {
        // Found by this target when cpu.max was parsed as f64 (`8 1e309` gave 0 cores,
        // `1e309 1` infinite ones); fixed by parsing integers.
        assert!(q > 0.0 && q.is_finite(), "cpu.max {v:?} gave quota {q}");
    }

    let cpus = kernel_file::cpu_list_count(v);
    if let Some(n) = cpus {
        let parts = v.trim().split(',').count();
        assert!(
            n <= parts.saturating_mul(MAX_CPUS_PER_RANGE),
            "cpu list {v:?} counted {n} CPUs in {parts} parts"
        );
    }

    if let Some((major, minor)) = v2::parse_dev(v) {
        assert_eq!(
            v2::parse_dev(&format!("{major}:{minor}")),
            Some((major, minor)),
            "MAJ:MIN round trip of {v:?}"
        );
    }

    for host_cpus in [0, 1, 64] {
        let limit = CpuLimit {
            quota_cores: quota,
            cpuset_cpus: cpus,
        };
        let n = limit.visible_cpus(host_cpus);
        assert!(
            (1..=host_cpus.max(1)).contains(&n),
            "{limit:?} shows {n} CPUs on a {host_cpus}-CPU host"
        );
    }
}

/// Container runtime state: runc's `state.json` (then its labels, its cgroup paths rebased onto
/// a fixture root, and the container built from it), crun's `status`, and an OCI bundle
/// `config.json` as the crun source reads it. Every container built must have a routable id.
pub fn runtime_state(data: &[u8]) {
    if let Ok(state) = runc::parse(data) {
        let labels = runc::labels(&state.config.labels);
        assert!(labels.len() <= state.config.labels.len());
        for raw in &state.config.labels {
            let key = raw.split_once('=').map_or(raw.as_str(), |(k, _)| k);
            assert!(labels.contains_key(key), "label {raw:?} lost its key");
        }

        let root = Path::new("/fixture/cgroup");
        let paths = CgroupPaths::from_runc(&state.cgroup_paths, root);
        assert_eq!(
            paths.unified.is_some(),
            state.cgroup_paths.contains_key(""),
            "the \"\" key and only it is the v2 path"
        );
        for p in paths.unified.iter().chain(paths.v1.values()) {
            assert!(p.starts_with(root), "{p:?} rebased outside {root:?}");
        }

        check_container(Discovered {
            runtime_id: state.id,
            pid: state.init_process_pid,
            start_ticks: state.init_process_start,
            cgroups: paths,
            rootfs: state.config.rootfs.map(PathBuf::from),
            hostname: state.config.hostname.filter(|h| !h.is_empty()),
            labels,
            source: "runc".into(),
        });
    }

    if let Ok(status) = crun::parse(data) {
        let _ = (status.pid, status.process_start_time, status.bundle);
    }

    if let Ok(bundle) = serde_json::from_slice::<crun::BundleConfig>(data) {
        check_container(Discovered {
            runtime_id: "crun-ctr".into(),
            pid: 1,
            start_ticks: 1,
            cgroups: CgroupPaths::default(),
            rootfs: None,
            hostname: bundle.hostname.filter(|h| !h.is_empty()),
            labels: bundle.annotations,
            source: "crun".into(),
        });
    }
}

/// Builds the container under the default label keys, with and without the Kubernetes
/// namespace fallback, and checks what the registry and the proxy rely on.
fn check_container(d: Discovered) {
    let k8s_off = LabelKeys {
        tenant_from_kubernetes_namespace: false,
        ..LabelKeys::default()
    };
    for keys in [LabelKeys::default(), k8s_off] {
        let Some(c) = container::from_discovered(d.clone(), &keys, "node-1") else {
            continue;
        };
        let i = &c.instance;
        assert!(
            is_dns_label(&i.id),
            "instance id {:?} is not a DNS label",
            i.id
        );
        assert_eq!(i.runtime_id, d.runtime_id);
        assert_eq!(i.labels, d.labels);
        for g in &i.groups {
            assert!(
                !g.is_empty() && !g.contains(',') && g == g.trim(),
                "group {g:?}"
            );
        }
        assert!(
            i.groups.windows(2).all(|w| w[0] < w[1]),
            "groups sorted, unique"
        );
    }
}

/// What reaches the agent's HTTP API from a (mTLS-authenticated, but otherwise arbitrary)
/// client: the `Accept` and `Accept-Encoding` headers and the query string.
pub fn http_inputs(data: &[u8]) {
    let t = text(data);
    let lower = t.to_ascii_lowercase();

    let format = Format::negotiate(Some(&t));
    assert_eq!(
        format,
        Format::negotiate(Some(&t)),
        "negotiation is deterministic"
    );
    if !lower.contains("application/openmetrics-text") {
        assert_eq!(format, Format::Text, "OpenMetrics without asking for it");
    }

    match Selection::from_query(Some(&t)) {
        Ok(sel) => {
            if !t.contains("collect") && !t.contains("exclude") {
                assert_eq!(sel, Selection::all(), "no collect[]/exclude[] selects all");
            }
        }
        Err(_) => assert!(
            t.contains("collect") || t.contains("exclude"),
            "query rejected without collect[]/exclude[]"
        ),
    }

    if server::accepts_gzip(Some(&t)) {
        assert!(
            lower.contains("gzip") || lower.contains('*'),
            "gzip accepted without gzip or *"
        );
    }
}

/// The agent's TOML configuration (operator-written). Cgroup rules that parse are compiled
/// as the agent compiles them; `problems()` is skipped (it reads files).
pub fn config(data: &[u8]) {
    let t = text(data);
    let Ok(cfg) = AgentConfig::parse(&t) else {
        return;
    };
    let rules = cfg.effective_rules();
    assert!(rules.len() >= cfg.discovery.cgroup_rules.len());
    for rule in &cfg.discovery.cgroup_rules {
        if let Ok(re) = rule.compile() {
            assert!(
                re.capture_names().any(|n| n == Some("id")),
                "rule {:?} compiled without an `id` capture",
                rule.name
            );
        }
    }
    if let Some(node_id) = &cfg.node_id {
        let _ = is_dns_label(node_id);
        check_id(None, node_id);
    }
}

/// Instance naming: the whole input as a runtime id, then split at the first newline into
/// (preferred label value, runtime id), then the host-name path of `default_node_id`.
pub fn naming(data: &[u8]) {
    let t = text(data);
    check_id(None, &t);
    check_id(Some(&t), &t);
    if let Some((preferred, runtime_id)) = t.split_once('\n') {
        check_id(Some(preferred), runtime_id);
    }
    check_id(None, &t.to_ascii_lowercase());
}

/// `instance_id_for` always returns a DNS label, deterministically, and follows its
/// documented precedence: a valid preferred label, else a valid runtime id, else a derived
/// `<prefix>-<12 hex>` (or `i-<12 hex>`).
fn check_id(preferred: Option<&str>, runtime_id: &str) {
    let id = instance_id_for(preferred, runtime_id);
    assert!(
        is_dns_label(&id),
        "instance_id_for({preferred:?}, {runtime_id:?}) = {id:?} is not a DNS label"
    );
    assert_eq!(
        id,
        instance_id_for(preferred, runtime_id),
        "instance_id_for is not deterministic"
    );
    let lowered = preferred.map(str::to_ascii_lowercase);
    if let Some(p) = lowered.filter(|p| is_dns_label(p)) {
        assert_eq!(id, p, "a valid preferred label wins");
    } else if is_dns_label(runtime_id) {
        assert_eq!(id, runtime_id, "a valid runtime id is kept");
    } else {
        let (prefix, hash) = id.rsplit_once('-').unwrap_or(("", ""));
        assert!(
            !prefix.is_empty()
                && hash.len() == 12
                && hash
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
            "derived id {id:?} is not <prefix>-<12 lowercase hex>"
        );
    }
}

/// The state-file reader's limits (`kernel_file::read_whole`, behind `read_regular` for
/// `state.json`, crun's `status`, OCI `config.json`, and every kernel file): the first two
/// bytes are the cap (big-endian, below 8 KiB), the third picks how often the simulated file
/// is interrupted (`EINTR`), the rest is the file. A file within the cap reads back exactly;
/// one past it is refused, never truncated; then the bytes read go to the state parsers.
pub fn state_file(data: &[u8]) {
    if data.len() < 3 {
        return;
    }
    let max = usize::from(u16::from_be_bytes([data[0], data[1]]) % 8192);
    // Never every call: a read that is always interrupted never ends, in the kernel too.
    let every = [0, 2, 3, 4][usize::from(data[2] % 4)];
    let content = &data[3..];
    let file = Interrupting {
        rest: content,
        every,
        calls: 0,
    };
    match kernel_file::read_whole(file, Path::new("state.json"), max) {
        Ok(bytes) => {
            assert!(
                content.len() <= max,
                "{} bytes read past a cap of {max}",
                content.len()
            );
            assert_eq!(bytes, content, "a file within the cap reads back exactly");
            runtime_state(&bytes);
        }
        Err(e) => {
            assert!(
                content.len() > max,
                "a file of {} bytes within {max}: {e}",
                content.len()
            );
            assert!(e.to_string().contains("longer than"), "{e}");
        }
    }
}

/// A regular file as `read(2)` serves it: each read fills the buffer unless the file ends,
/// and every `every`-th call (when not 0) is interrupted first.
struct Interrupting<'a> {
    rest: &'a [u8],
    every: usize,
    calls: usize,
}

impl std::io::Read for Interrupting<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.calls += 1;
        if self.every != 0 && self.calls.is_multiple_of(self.every) {
            return Err(std::io::ErrorKind::Interrupted.into());
        }
        let n = buf.len().min(self.rest.len());
        buf[..n].copy_from_slice(&self.rest[..n]);
        self.rest = &self.rest[n..];
        Ok(n)
    }
}
