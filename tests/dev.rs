//! `lookout dev`, as the README's first command: this build's binary in a child process,
//! real runc containers, and Debian's Prometheus 2.42 started with the `prometheus.yml` that
//! `lookout dev` wrote, unmodified. Asserted: the unlabelled container is a `dev` target, up,
//! named by its DNS name, with its memory limit as MemTotal; a container labelled for another
//! tenant is not; the operator's node job is up; the curl line it prints works; keys are
//! private; a second `lookout dev` on the same directory is refused; SIGTERM stops it cleanly.
//!
//! Needs root, `runc`, `busybox-static`, `prometheus` and `curl` (deploy/test.sh installs
//! them).

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use lookout_testkit::containers::{ContainerSpec, Runc};
use lookout_testkit::net::free_port;
use lookout_testkit::prometheus::{self, Prometheus};

const MIB: u64 = 1 << 20;

struct Dev {
    child: Child,
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The lines `lookout dev` printed up to and including "Ctrl-C stops.".
fn read_summary(child: &mut Child) -> Vec<String> {
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => {
                let done = line.contains("Ctrl-C stops.");
                lines.push(line);
                if done {
                    return lines;
                }
            }
            Err(e) => panic!("lookout dev printed no summary ({e}); so far: {lines:#?}"),
        }
    }
}

/// The command printed on the line after `heading`.
fn command_after(lines: &[String], heading: &str) -> String {
    let at = lines
        .iter()
        .position(|l| l.starts_with(heading))
        .unwrap_or_else(|| panic!("no {heading:?} in {lines:#?}"));
    lines[at + 1].trim().to_string()
}

#[test]
fn lookout_dev_serves_a_ready_prometheus() {
    let runc = Runc::new();
    let _mine = runc.run(ContainerSpec::new("dev-unlabelled").memory_limit(40 * MIB));
    let _theirs = runc.run(
        ContainerSpec::new("dev-acme")
            .memory_limit(40 * MIB)
            .annotation("lookout.tenant", "acme"),
    );
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("lookout-dev");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let spawn = |stderr: Stdio| {
        Command::new(env!("CARGO_BIN_EXE_lookout"))
            .arg("dev")
            .arg("--dir")
            .arg(&dir)
            .args(["--listen", &listen, "--runc-root"])
            .arg(runc.state_root())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn lookout dev")
    };
    let log = std::fs::File::create(tmp.path().join("dev.log")).expect("log");
    let mut dev = Dev {
        child: spawn(Stdio::from(log)),
    };
    let summary = read_summary(&mut dev.child);

    // Keys are private; the prometheus.yml is where it says.
    for key in [
        "ca-key.pem",
        "server-key.pem",
        "tenant-dev-key.pem",
        "agent-key.pem",
    ] {
        let mode = std::fs::metadata(dir.join(key))
            .expect(key)
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{key}");
    }
    let start_line = command_after(&summary, "Start Prometheus");
    let config = dir.canonicalize().expect("dir").join("prometheus.yml");
    assert!(
        start_line.contains(&format!("--config.file={}", config.display())),
        "{start_line}"
    );

    // The printed curl line lists exactly the dev tenant's containers.
    let list = command_after(&summary, "List your containers");
    let out = Command::new("sh")
        .args(["-c", &format!("{list} -sf --max-time 10")])
        .output()
        .expect("curl");
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{list}: {body}");
    let listed: serde_json::Value = serde_json::from_str(&body).expect("discover JSON");
    let ids: Vec<&str> = listed["containers"]
        .as_array()
        .expect("containers")
        .iter()
        .filter_map(|c| c["vm_uuid"].as_str())
        .collect();
    assert!(ids.contains(&"dev-unlabelled"), "{body}");
    assert!(
        !ids.contains(&"dev-acme"),
        "another tenant's container: {body}"
    );

    // A second `lookout dev` on the same directory is refused, leaving the first alone.
    let second = spawn(Stdio::piped())
        .wait_with_output()
        .expect("second dev");
    assert!(!second.status.success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("another `lookout dev`"), "{err}");

    // Prometheus, with the file as written.
    let prom = Prometheus::start_with_file("dev", &config);
    let converge = Duration::from_secs(90);
    let job_targets = |ts: &[prometheus::Target], job: &str| {
        ts.iter()
            .filter(|t| t.labels.get("job").map(String::as_str) == Some(job))
            .cloned()
            .collect::<Vec<_>>()
    };
    let ts = prom.wait_targets(
        "scraping the dev container and the node",
        converge,
        |ts| match ts.iter().find(|t| {
            t.discovered
                .get("__meta_triton_machine_id")
                .map(String::as_str)
                == Some("dev-acme")
        }) {
            Some(_) => Err("another tenant's container is a target".into()),
            None => Ok(()),
        },
        |ts| {
            let mine = job_targets(ts, "lookout-dev");
            let node = job_targets(ts, "lookout-dev-node");
            mine.iter().any(|t| {
                t.labels.get("instance").map(String::as_str)
                    == Some("dev-unlabelled.lookout.localhost")
                    && t.health == "up"
            }) && node.len() == 1
                && node[0].health == "up"
        },
    );
    let dev_targets = job_targets(&ts, "lookout-dev");
    assert!(
        dev_targets.iter().all(|t| t.health == "up"),
        "{dev_targets:#?}"
    );
    let v = prom.wait_value(
        "node_memory_MemTotal_bytes{instance=\"dev-unlabelled.lookout.localhost\"}",
        converge,
    );
    assert_eq!(v as u64, 40 * MIB);

    // SIGTERM: a clean exit.
    let pid = dev.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill")
        .success());
    let mut exited = None;
    for _ in 0..100 {
        if let Some(status) = dev.child.try_wait().expect("wait") {
            exited = Some(status);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = exited.expect("lookout dev exits within 10 s of SIGTERM");
    assert!(status.success(), "{status}");
}
