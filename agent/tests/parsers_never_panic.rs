//! The always-on shadow of the agent's fuzz targets in `fuzz/`.
//!
//! `cargo fuzz` needs a nightly compiler (or `RUSTC_BOOTSTRAP=1`) and minutes per target, so
//! it runs by hand (`fuzz/README.md`). This test runs the very same harnesses on stable Rust
//! in every CI run: `fuzz/src/agent.rs` is included below as a module, so the parsers covered
//! and the invariants asserted cannot drift apart. Each target gets its seed corpus
//! (`fuzz/seeds/<target>/`, real kernel and runtime samples), a few hand-picked edge cases,
//! and `shadow::MUTATIONS` deterministic mutants of its seeds from a fixed-seed xorshift PRNG:
//! bit flips, truncations, deletions, duplications, splices between seeds, and insertions of
//! separators (`:`, ` `, `\n`, `=`, `,`), digits, numbers that overflow `u32`/`u64`, `-`,
//! escapes and non-ASCII text. The runner, `fuzz/src/shadow.rs`, is shared with the proxy's
//! twin of this test, `proxy/tests/parsers_never_panic.rs`.
//!
//! A parser that panics, or breaks an invariant, fails the test with the target's name and
//! the input in hex; a target that has not finished within `shadow::DEADLINE` (a hang) fails
//! it with the input it is stuck on. Either way, add the input to the target's `extra` list
//! below with a comment naming the bug, and fix the parser.

#[path = "../../fuzz/src/agent.rs"]
mod harness;
#[path = "../../fuzz/src/shadow.rs"]
mod shadow;

use shadow::{exercise, Target, AGENT_TARGETS};

/// Embeds seed files: `seeds!("target": "file", …)`.
macro_rules! seeds {
    ($target:literal: $($file:literal),+ $(,)?) => {
        &[$((
            $file,
            include_bytes!(concat!("../../fuzz/seeds/", $target, "/", $file)) as &[u8],
        )),+]
    };
}

const PROCFS: Target = Target {
    name: "procfs",
    run: harness::procfs,
    seeds: seeds!("procfs":
        "proc_meminfo",
        "proc_net_dev",
        "proc_pid_cgroup_hybrid",
        "proc_pid_cgroup_unified",
        "proc_pid_mountinfo",
        "proc_pid_mountinfo_container",
        "proc_pid_stat",
        "proc_pid_stat_hostile_comm",
    ),
    extra: &[
        b"",
        b")",
        b"1 () R",
        b"1 (x) \xe2\x80\xa8 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20",
        b"1 (x) R 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 18446744073709551616",
        b"0::",
        b"0::/\n\n:::/\n",
        b"a\nb\nx:",
        b"a\nb\n\xc2\x85eth0\xc2\x85: 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16",
        b"a\nb\nlo: 18446744073709551616 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0",
        b"1 2 3 4 5 6 - a",
        b"1 2 3:4 / /x\\777\\ rw - t\\134 s\\0",
        b"1 2 3:4 / /\\ rw - - -",
        b"MemTotal: 18446744073709551615 kB\n:\n: 1\nSwapTotal:",
    ],
    dictionary: &[],
};

const CGROUPFS: Target = Target {
    name: "cgroupfs",
    run: harness::cgroupfs,
    seeds: seeds!("cgroupfs":
        "cpuset.cpus.effective",
        "dev",
        "proc_pressure_io",
        "v1_blkio.throttle.io_service_bytes_recursive",
        "v1_blkio_empty",
        "v1_cpu.stat",
        "v1_cpuacct.stat",
        "v1_cpuset.cpus",
        "v1_memory.limit_in_bytes",
        "v1_memory.stat",
        "v2_cpu.max",
        "v2_cpu.max_unlimited",
        "v2_cpu.pressure",
        "v2_cpu.pressure_no_full",
        "v2_cpu.stat",
        "v2_io.stat",
        "v2_memory.events",
        "v2_memory.max",
        "v2_memory.stat",
    ),
    extra: &[
        b"",
        b"0-18446744073709551615",
        b"18446744073709551614-18446744073709551615",
        b"0-65536,0-65536,0-65536",
        b"0-65537",
        b"-,--,0--1, - ",
        b"4611686018427387903\n4611686018427387904\n-1\nmax\n-0",
        b"4294967295:4294967295 rbytes=18446744073709551615\n4294967296:0",
        b"8:0 Read 18446744073709551616",
        b"Total\nTotal 1 2",
        b"some total=\nfull total=18446744073709551615",
        b"irq total=1",
        b"0 1\n-1 100000\n1 0\nNaN 1\n1 NaN\n-0 -0",
        // Regression, bug cpu-max-float (fuzz artifact crash-138a3bc3…): `parse_cpu_max`
        // parsed f64, so the period `2818806E1808` was +inf and the quota 0 cores. Fixed; see
        // `cpu_max_quota_is_finite_and_positive`.
        b"\n8\n2818806E1808\n",
        // Same bug, other way round: quotas of +inf cores (the first input also from the
        // fuzzer).
        b"9223372036e854771712",
        b"inf 1\n1e308 1e-308\n+inf\n",
    ],
    dictionary: &[],
};

const RUNTIME_STATE: Target = Target {
    name: "runtime_state",
    run: harness::runtime_state,
    seeds: seeds!("runtime_state":
        "crun_status",
        "oci_config.json",
        "runc_state.json",
        "runc_state_v1.json",
    ),
    extra: &[
        b"",
        b"{}",
        b"null",
        b"[]",
        b"{\"pid\":4294967296}",
        br#"{"id":"","init_process_pid":0,"init_process_start":0,"config":{"labels":["","=","==","a","a=1","a=2"]},"cgroup_paths":{"":"","x":"/sys/fs/cgroup/../../etc","/abs":"//x"}}"#,
        br#"{"id":"-","init_process_pid":1,"init_process_start":1,"config":{"hostname":"","labels":["lookout.id=-","lookout.groups=,, ,a,a"]}}"#,
        br#"{"annotations":{"io.kubernetes.cri.container-type":"sandbox"},"hostname":"x"}"#,
        br#"{"annotations":{"lookout.id":"\u0130","io.kubernetes.pod.name":"p"}}"#,
    ],
    dictionary: &[],
};

const HTTP_INPUTS: Target = Target {
    name: "http_inputs",
    run: harness::http_inputs,
    seeds: seeds!("http_inputs":
        "accept_encoding_prometheus",
        "accept_encoding_weights",
        "accept_prometheus",
        "accept_text_first",
        "query_both",
        "query_collect",
        "query_exclude",
    ),
    extra: &[
        b"",
        b",;,;=;q=",
        b"gzip;q=NaN, *;q=-0, GZIP;q=1e-50",
        b"application/openmetrics-text;version=;q=inf",
        b"APPLICATION/OPENMETRICS-TEXT;Q=1",
        b"collect[]=&exclude[]",
        b"collect%5B%5D=cpu&collect[]=cpu&=&&",
    ],
    dictionary: &[],
};

const CONFIG: Target = Target {
    name: "config",
    run: harness::config,
    seeds: seeds!("config": "full.toml", "minimal.toml", "problems.toml"),
    extra: &[
        b"",
        b"[tls]\ncert=''\nkey=''\nclient_ca=''\nnode_id='\xc4\xb0'\n",
        b"[tls]\ncert=''\nkey=''\nclient_ca=''\n[collection]\ncache_ttl='18446744073709551616s'",
        b"[tls]\ncert=''\nkey=''\nclient_ca=''\n[[discovery.cgroup_rules]]\nname=''\npattern='(?P<id>'",
    ],
    dictionary: &[],
};

const NAMING: Target = Target {
    name: "naming",
    run: harness::naming,
    seeds: seeds!("naming":
        "already_a_label",
        "docker_id",
        "hostname_fqdn",
        "mixed_case",
        "only_separators",
        "unicode",
        "uuid_and_runtime_id",
    ),
    extra: &[
        b"",
        b"-",
        b"\n",
        b"A\na",
        b"\xe2\x84\xaa",
        b"\xc4\xb0\n\xc4\xb0",
        b"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        b"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        b"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\nx",
        b"a_______________________________________b_c",
    ],
    dictionary: &[],
};

const STATE_FILE: Target = Target {
    name: "state_file",
    run: harness::state_file,
    seeds: seeds!("state_file":
        "crun_status",
        "runc_state_at_cap",
        "runc_state_past_cap",
        "runc_state_within_cap",
    ),
    extra: &[
        b"",
        b"\x00\x00\x00",
        b"\x00\x00\x01x",
        b"\x00\x01\x01x",
        b"\x1f\xff\x04{}",
        b"\xff\xff\x00{}",
    ],
    dictionary: &[],
};

const TARGETS: [&Target; 7] = [
    &PROCFS,
    &CGROUPFS,
    &RUNTIME_STATE,
    &STATE_FILE,
    &HTTP_INPUTS,
    &CONFIG,
    &NAMING,
];

#[test]
fn procfs_parsers_never_panic() {
    exercise(&PROCFS);
}

#[test]
fn cgroupfs_parsers_never_panic() {
    exercise(&CGROUPFS);
}

#[test]
fn runtime_state_parsers_never_panic() {
    exercise(&RUNTIME_STATE);
}

#[test]
fn state_file_reads_stop_at_their_cap() {
    exercise(&STATE_FILE);
}

#[test]
fn http_input_parsers_never_panic() {
    exercise(&HTTP_INPUTS);
}

#[test]
fn config_parser_never_panics() {
    exercise(&CONFIG);
}

#[test]
fn instance_ids_are_always_dns_labels() {
    exercise(&NAMING);
}

/// Regression for bug cpu-max-float, found by the `cgroupfs` fuzz target: `parse_cpu_max`
/// parsed quota and period as `f64`, so inputs the kernel never writes gave a zero or infinite
/// quota (`lookout_container_cpu_limit_cores 0` / `+Inf`). It now parses integers.
#[test]
fn cpu_max_quota_is_finite_and_positive() {
    use lookout_agent::cgroup::v2::parse_cpu_max;
    for input in [
        "\n8\n2818806E1808\n",
        "9223372036e854771712",
        "8 1e309",
        "1e309 1",
        "inf 1",
        "1 1e400",
    ] {
        // None of these is what the kernel writes: refused, not turned into a quota.
        assert_eq!(parse_cpu_max(input), None, "cpu.max {input:?}");
    }
}

/// The seed lists above and `fuzz/seeds/` hold the same files, so a seed added for the fuzzer
/// is not silently left out here (and a listed one cannot go missing); every fuzz target is
/// shadowed here or in the proxy's twin of this test.
#[test]
fn every_seed_file_is_embedded() {
    shadow::check_seed_lists(&TARGETS, &AGENT_TARGETS);
}

/// The seeds are real samples that the parsers accept, so mutants start deep in the happy
/// path instead of at the first error branch.
#[test]
fn seeds_are_accepted_by_their_parsers() {
    use lookout_agent::cgroup::{v1, v2};
    use lookout_agent::config::AgentConfig;
    use lookout_agent::source::{crun, runc};
    use lookout_agent::{host, kernel_file, mountinfo, netdev, pressure, process};

    let seed = |t: &Target, name: &str| -> String {
        let (_, bytes) = t
            .seeds
            .iter()
            .find(|(f, _)| *f == name)
            .expect("seed is listed");
        String::from_utf8(bytes.to_vec()).expect("seed is UTF-8")
    };
    let p = |n| seed(&PROCFS, n);
    let c = |n| seed(&CGROUPFS, n);
    let r = |n| seed(&RUNTIME_STATE, n);

    for n in ["proc_pid_stat", "proc_pid_stat_hostile_comm"] {
        assert!(process::parse_stat(&p(n)).is_some(), "{n}");
    }
    for n in ["proc_pid_cgroup_hybrid", "proc_pid_cgroup_unified"] {
        assert!(process::parse_cgroup(&p(n)).is_some(), "{n}");
    }
    assert!(netdev::parse(&p("proc_net_dev")).is_ok_and(|d| !d.is_empty()));
    for n in ["proc_pid_mountinfo", "proc_pid_mountinfo_container"] {
        assert!(mountinfo::parse(&p(n)).is_ok_and(|m| !m.is_empty()), "{n}");
    }
    assert!(host::parse_meminfo(&p("proc_meminfo"))
        .iter()
        .any(|(k, _)| k == "MemTotal"));

    for n in [
        "v2_cpu.pressure",
        "v2_cpu.pressure_no_full",
        "proc_pressure_io",
    ] {
        assert!(pressure::parse(&c(n)).is_ok(), "{n}");
    }
    assert!(v2::parse_io_stat(&c("v2_io.stat")).is_ok_and(|d| d.len() == 3));
    assert!(v1::parse_blkio(&c("v1_blkio.throttle.io_service_bytes_recursive")).is_ok());
    assert_eq!(v2::parse_cpu_max(&c("v2_cpu.max")), Some(1.5));
    assert_eq!(v2::parse_cpu_max(&c("v2_cpu.max_unlimited")), None);
    assert_eq!(
        kernel_file::cpu_list_count(&c("cpuset.cpus.effective")),
        Some(7)
    );
    assert_eq!(v2::parse_dev(c("dev").trim()), Some((8, 0)));
    assert_eq!(
        kernel_file::parse_limit(c("v2_memory.max").trim()),
        Some(None)
    );
    for n in [
        "v2_cpu.stat",
        "v2_memory.stat",
        "v1_memory.stat",
        "v1_cpuacct.stat",
    ] {
        assert!(kernel_file::flat_keyed(&c(n)).count() > 1, "{n}");
    }

    for n in ["runc_state.json", "runc_state_v1.json"] {
        assert!(runc::parse(r(n).as_bytes()).is_ok(), "{n}");
    }
    assert!(crun::parse(r("crun_status").as_bytes()).is_ok());
    let bundle: crun::BundleConfig =
        serde_json::from_str(&r("oci_config.json")).expect("OCI config seed parses");
    assert!(!bundle.annotations.is_empty());

    for n in ["full.toml", "minimal.toml", "problems.toml"] {
        AgentConfig::parse(&seed(&CONFIG, n)).expect("config seed parses");
    }
}
