//! Filesystem sizes as the container sees them: mounts from `/proc/<pid>/mountinfo`, sizes
//! from `statfs` through `/proc/<pid>/root/<mountpoint>` (the container's own root, without
//! entering its mount namespace).
//!
//! `statfs` on a dead network mount can block forever, so every call runs on a blocking
//! thread under a deadline. A mount whose call overran is remembered as stuck and not asked
//! again until that call returns, so a hung filesystem costs one thread, not one per scrape
//! (node_exporter's stuck-mount rule).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::mountinfo::Mount;

/// Filesystem types that hold no data of the container (node_exporter's defaults, minus
/// `overlay`, which is the container's root filesystem and must be reported).
const IGNORED_FSTYPES: &[&str] = &[
    "autofs",
    "binfmt_misc",
    "bpf",
    "cgroup",
    "cgroup2",
    "configfs",
    "debugfs",
    "devpts",
    "devtmpfs",
    "fusectl",
    "hugetlbfs",
    "iso9660",
    "mqueue",
    "nsfs",
    "proc",
    "procfs",
    "pstore",
    "rpc_pipefs",
    "securityfs",
    "selinuxfs",
    "squashfs",
    "erofs",
    "sysfs",
    "tracefs",
];

/// Filesystems whose `statfs` asks a server or a user-space daemon, and so can block for as
/// long as that peer is gone.
pub fn can_hang(fstype: &str) -> bool {
    fstype.starts_with("fuse")
        || fstype.starts_with("nfs")
        || matches!(
            fstype,
            "cifs"
                | "smb3"
                | "smbfs"
                | "ncpfs"
                | "ceph"
                | "glusterfs"
                | "9p"
                | "afs"
                | "lustre"
                | "gpfs"
                | "beegfs"
                | "davfs"
                | "orangefs"
                | "virtiofs"
                | "vboxsf"
                | "cvmfs"
                | "ocfs2"
                | "gfs2"
        )
}

/// Mount points never reported (node_exporter's defaults).
fn ignored_mountpoint(mp: &str) -> bool {
    ["/dev", "/proc", "/sys"]
        .iter()
        .any(|p| mp == *p || mp.strip_prefix(p).is_some_and(|r| r.starts_with('/')))
        || mp.starts_with("/run/credentials/")
}

/// True if node_exporter would report this mount.
pub fn wanted(m: &Mount) -> bool {
    !IGNORED_FSTYPES.contains(&m.fstype.as_str()) && !ignored_mountpoint(&m.mountpoint)
}

/// The mounts a container's view reports, in mountinfo order: the [`wanted`] ones, each mount
/// point once (one mounted over is reported once, as node_exporter does). Worked out when the
/// mount list is read, not on every scrape.
pub fn reported(mounts: Vec<Mount>) -> Vec<Arc<Mount>> {
    let mut seen = HashSet::new();
    mounts
        .into_iter()
        .filter(|m| wanted(m) && seen.insert(m.mountpoint.clone()))
        .map(Arc::new)
        .collect()
}

/// Sizes of one filesystem, in bytes and inodes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Total size.
    pub size: u64,
    /// Free, including blocks reserved for root.
    pub free: u64,
    /// Free for unprivileged users.
    pub avail: u64,
    /// Inodes.
    pub files: u64,
    /// Free inodes.
    pub files_free: u64,
}

/// One reported filesystem; `usage` is an error text (node_exporter's `device_error`) when
/// statfs failed or timed out.
#[derive(Debug, Clone)]
pub struct Filesystem {
    /// The mount.
    pub mount: Arc<Mount>,
    /// Sizes, or why there are none.
    pub usage: Result<Usage, String>,
}

/// Runs statfs calls under a deadline and remembers stuck mounts.
#[derive(Debug, Clone)]
pub struct Statfs {
    timeout: Duration,
    stuck: Arc<Mutex<HashSet<PathBuf>>>,
}

impl Statfs {
    /// A statfs runner with a per-call deadline.
    pub fn new(timeout: Duration) -> Self {
        Statfs {
            timeout,
            stuck: Arc::default(),
        }
    }

    /// Sizes of `mounts`, each resolved **inside** `root` (a container's `/proc/<pid>/root`)
    /// with `openat2(RESOLVE_IN_ROOT)`: a symlink the tenant plants above a mount point —
    /// even one to `/` — resolves within the container's root, never into the host's, and
    /// magic links (`/proc/self/root`) are not followed. Mounts of filesystems that can hang
    /// are stat'ed under the deadline ([`Statfs::stat`]).
    pub async fn stat_all(&self, root: &Path, mounts: &[Arc<Mount>]) -> Vec<Filesystem> {
        let root_fd = match open_root(root) {
            Ok(fd) => Arc::new(fd),
            Err(e) => {
                return mounts
                    .iter()
                    .map(|m| Filesystem {
                        mount: Arc::clone(m),
                        usage: Err(format!("{}: {e}", root.display())),
                    })
                    .collect()
            }
        };
        let mut out = Vec::with_capacity(mounts.len());
        for mount in mounts {
            let rel = relative(&mount.mountpoint);
            let usage = if can_hang(&mount.fstype) {
                let fd = Arc::clone(&root_fd);
                let key = root.join(&rel);
                self.guarded(key, move || statfs_in(&fd, &rel)).await
            } else {
                statfs_in(&root_fd, &rel)
            };
            out.push(Filesystem {
                mount: Arc::clone(mount),
                usage,
            });
        }
        out
    }

    /// One statfs of `path` under the deadline (see [`Statfs::guarded`]).
    pub async fn stat(&self, path: PathBuf) -> Result<Usage, String> {
        let key = path.clone();
        self.guarded(key, move || statfs(&path)).await
    }

    /// Runs `call` on a blocking thread under the deadline. `key` counts as stuck from the
    /// moment the call starts until it returns, so a call abandoned for any reason (its own
    /// deadline, or the request's) is never started again while it still blocks a thread.
    async fn guarded(
        &self,
        key: PathBuf,
        call: impl FnOnce() -> Result<Usage, String> + Send + 'static,
    ) -> Result<Usage, String> {
        {
            let mut stuck = self.stuck.lock().unwrap_or_else(|e| e.into_inner());
            if !stuck.insert(key.clone()) {
                return Err("mount is stuck (an earlier statfs has not returned)".into());
            }
        }
        let stuck = Arc::clone(&self.stuck);
        let call = tokio::task::spawn_blocking(move || {
            let r = call();
            stuck.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
            r
        });
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => Err(format!("statfs task failed: {e}")),
            Err(_) => Err(format!("statfs timed out after {:?}", self.timeout)),
        }
    }
}

/// A mount point relative to the root it is resolved in (`.` for the root itself).
fn relative(mountpoint: &str) -> String {
    match mountpoint.trim_start_matches('/') {
        "" => ".".to_string(),
        rel => rel.to_string(),
    }
}

/// The container's root directory, held for the resolutions below (following the
/// `/proc/<pid>/root` magic link is the point of opening it).
fn open_root(root: &Path) -> std::io::Result<std::os::fd::OwnedFd> {
    use rustix::fs::{Mode, OFlags};
    rustix::fs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(Into::into)
}

/// statfs of `rel` resolved as if `root` were `/`.
fn statfs_in(root: &std::os::fd::OwnedFd, rel: &str) -> Result<Usage, String> {
    use rustix::fs::{Mode, OFlags, ResolveFlags};
    let fd = rustix::fs::openat2(
        root,
        rel,
        OFlags::PATH | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    )
    .map_err(|e| e.to_string())?;
    usage(rustix::fs::fstatfs(&fd).map_err(|e| e.to_string())?)
}

fn statfs(path: &std::path::Path) -> Result<Usage, String> {
    usage(rustix::fs::statfs(path).map_err(|e| e.to_string())?)
}

/// The sizes in a statfs reply. The fields' widths differ between architectures (hence the
/// casts, needless on x86_64).
#[allow(clippy::unnecessary_cast)]
fn usage(s: rustix::fs::StatFs) -> Result<Usage, String> {
    let bsize = s.f_bsize as u64;
    Ok(Usage {
        size: (s.f_blocks as u64).saturating_mul(bsize),
        free: (s.f_bfree as u64).saturating_mul(bsize),
        avail: (s.f_bavail as u64).saturating_mul(bsize),
        files: s.f_files as u64,
        files_free: s.f_ffree as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(mp: &str, fstype: &str) -> Mount {
        Mount {
            mountpoint: mp.into(),
            fstype: fstype.into(),
            device: "d".into(),
            readonly: false,
        }
    }

    #[test]
    fn keeps_overlay_root_drops_pseudo_filesystems() {
        assert!(wanted(&m("/", "overlay")));
        assert!(wanted(&m("/data", "ext4")));
        assert!(wanted(&m("/tmp", "tmpfs")));
        assert!(wanted(&m("/device", "ext4")));
        assert!(!wanted(&m("/proc", "proc")));
        assert!(!wanted(&m("/dev/shm", "tmpfs")));
        assert!(!wanted(&m("/sys/fs/cgroup", "cgroup")));
    }

    #[test]
    fn reported_mounts_are_wanted_and_each_mount_point_once() {
        let r = reported(vec![
            m("/", "overlay"),
            m("/proc", "proc"),
            m("/data", "ext4"),
            m("/data", "xfs"),
            m("/tmp", "tmpfs"),
        ]);
        let got: Vec<(&str, &str)> = r
            .iter()
            .map(|m| (m.mountpoint.as_str(), m.fstype.as_str()))
            .collect();
        assert_eq!(
            got,
            [("/", "overlay"), ("/data", "ext4"), ("/tmp", "tmpfs")]
        );
    }

    #[tokio::test]
    async fn stats_a_real_directory() {
        let s = Statfs::new(Duration::from_secs(5));
        let u = s.stat("/".into()).await.expect("statfs /");
        assert!(u.size > 0 && u.avail <= u.free && u.free <= u.size);
        assert!(s.stat("/nonexistent/x".into()).await.is_err());
    }
}
