//! Which of a process's namespaces are the host's: what the agent must never show a tenant.
//!
//! A container that shares the host's network namespace (Kubernetes `hostNetwork`, Docker
//! `--network host`) sees the host's interfaces in its `/proc/<pid>/net/dev`; one that
//! shares the host's mount namespace sees the host's filesystems in its `mountinfo`. Those
//! belong to the operator, not the tenant, so the view withholds the collector (its
//! `node_scrape_collector_success` is 0 and no series are rendered). A process in *all* of
//! the host's namespaces is no container at all (a state file pointing at pid 1, or at any
//! host daemon) and is never tracked.
//!
//! "The host" is the init process of the agent's procfs root (`<proc>/1`), whose namespace
//! links are compared by device and inode — the kernel's identity of a namespace. Where
//! pid 1's links cannot be read (some sandboxes refuse even root; a fixture tree has no
//! `ns/`), the agent's own (`<proc>/self`) stand in for them: the agent runs in the host's
//! namespaces (a Kubernetes DaemonSet with `hostNetwork` and `hostPID`, as deploy/k8s has
//! it). When a container's link cannot be read, that namespace is taken as its own: on a
//! real node the agent runs as root and every live process has them.

use std::path::Path;

/// The namespace kinds compared; a process sharing all of them with the host is the host.
const KINDS: [&str; 5] = ["mnt", "net", "pid", "uts", "ipc"];

/// The identities (device, inode) of a process's namespaces, in [`KINDS`] order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NamespaceIds([Option<(u64, u64)>; 5]);

impl NamespaceIds {
    /// The namespaces of the process whose `/proc/<pid>` is `pid_dir`.
    pub fn of(pid_dir: &Path) -> NamespaceIds {
        let mut ids = [None; 5];
        for (slot, kind) in ids.iter_mut().zip(KINDS) {
            *slot = rustix::fs::stat(pid_dir.join("ns").join(kind))
                .ok()
                .map(|st| (st.st_dev, st.st_ino));
        }
        NamespaceIds(ids)
    }

    /// The host's namespaces under the procfs root `proc`: pid 1's, each kind the agent
    /// cannot read there taken from the agent itself.
    pub fn host(proc: &Path) -> NamespaceIds {
        let init = NamespaceIds::of(&proc.join("1"));
        let me = NamespaceIds::of(&proc.join("self"));
        let mut ids = init.0;
        for (slot, mine) in ids.iter_mut().zip(me.0) {
            if slot.is_none() {
                *slot = mine;
            }
        }
        NamespaceIds(ids)
    }

    fn same(&self, host: &NamespaceIds, kind: usize) -> bool {
        matches!((self.0[kind], host.0[kind]), (Some(a), Some(b)) if a == b)
    }
}

/// Which of a container's namespaces are the host's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SharedWithHost {
    /// The network namespace: its interfaces are the host's.
    pub net: bool,
    /// The mount namespace: its filesystems are the host's.
    pub mnt: bool,
    /// Every namespace compared: the process is the host, not a container.
    pub all: bool,
}

impl SharedWithHost {
    /// Compares a process's namespaces with the host's.
    pub fn between(process: &NamespaceIds, host: &NamespaceIds) -> SharedWithHost {
        SharedWithHost {
            mnt: process.same(host, 0),
            net: process.same(host, 1),
            all: (0..KINDS.len()).all(|k| process.same(host, k)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_the_host_and_a_fresh_network_namespace_is_not() {
        // The test runs in the host's namespaces (as root in CI): itself compared with the
        // host's (pid 1's where readable, which some sandboxes refuse even to root).
        let host = NamespaceIds::host(Path::new("/proc"));
        let me = NamespaceIds::of(Path::new("/proc/self"));
        assert!(
            host.0.iter().all(Option::is_some),
            "the host's ns links are known"
        );
        let shared = SharedWithHost::between(&me, &host);
        assert!(shared.all && shared.net && shared.mnt, "{shared:?}");

        let mut other_net = me;
        other_net.0[1] = Some((0, 1));
        let shared = SharedWithHost::between(&other_net, &host);
        assert!(!shared.net && shared.mnt && !shared.all, "{shared:?}");

        // Unreadable links are the container's own.
        let unknown = NamespaceIds::default();
        assert_eq!(
            SharedWithHost::between(&unknown, &host),
            SharedWithHost::default()
        );
    }
}
