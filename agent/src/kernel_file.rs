//! Reading small kernel files (cgroupfs, procfs) and the formats they share.
//!
//! Parsers here never panic on what the kernel (or a fixture, or a fuzzer) hands them: bad
//! input is a [`KernelFileError::Parse`]. A file that vanishes mid-read (a container that
//! just exited) is a [`KernelFileError::Gone`], which callers treat as "no data", not as a
//! failure of the agent.

use std::io;
use std::path::{Path, PathBuf};

/// Why a kernel file gave no usable value.
#[derive(Debug, thiserror::Error)]
pub enum KernelFileError {
    /// The file or its process/cgroup no longer exists.
    #[error("{0}: gone")]
    Gone(PathBuf),
    /// Any other read error.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The content is not in the documented format.
    #[error("{path}: {what}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        what: String,
    },
}

impl KernelFileError {
    /// A parse error for `path`.
    pub fn parse(path: &Path, what: impl Into<String>) -> Self {
        KernelFileError::Parse {
            path: path.to_path_buf(),
            what: what.into(),
        }
    }

    /// True when the thing read has gone away (process exited, cgroup removed).
    pub fn is_gone(&self) -> bool {
        matches!(self, KernelFileError::Gone(_))
    }
}

/// The most the agent reads of one kernel file. The largest it reads is a container's
/// `mountinfo`, about 150 bytes a mount: 16 MiB is 100,000 mounts. Anything longer is not a
/// kernel file the agent expects (a bind mount of `/dev/zero`, say) and is refused.
pub const MAX_KERNEL_FILE: usize = 16 << 20;

/// The most the agent reads of one runtime state file (`state.json`, crun's `status`, an
/// OCI `config.json`): a Kubernetes pod's config with every annotation is tens of KiB.
pub const MAX_STATE_FILE: usize = 4 << 20;

/// How files are opened: never blocking on open or read (a FIFO planted where a file is
/// expected opens at once and reads nothing), never following a symlink in the last
/// component, never inherited by children.
fn open_flags() -> rustix::fs::OFlags {
    use rustix::fs::OFlags;
    OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOFOLLOW
}

/// Reads a whole small file as text. `ENOENT`/`ESRCH` become [`KernelFileError::Gone`].
///
/// Opened as [`open_flags`] says and checked to be a regular file (procfs and cgroupfs files
/// are), so no FIFO, device or symlink planted in its place can stall or flood the agent;
/// read up to [`MAX_KERNEL_FILE`].
///
/// No `stat` for a size hint (kernel files report size 0 or 4096 anyway); reads go on
/// until one returns nothing (see [`read_whole`] for why a short read is not the end).
pub fn read(path: &Path) -> Result<String, KernelFileError> {
    text(read_regular(path, MAX_KERNEL_FILE)?, path)
}

/// Reads a whole file of at most `max` bytes, refusing anything but a regular file (see
/// [`read`]). For runtime state files, whose directories anyone with root on the node — or
/// a bug — can fill with anything.
pub fn read_regular(path: &Path, max: usize) -> Result<Vec<u8>, KernelFileError> {
    let fd = rustix::fs::open(path, open_flags(), rustix::fs::Mode::empty())
        .map_err(|e| io_error(path, e.into()))?;
    let st = rustix::fs::fstat(&fd).map_err(|e| io_error(path, e.into()))?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
        return Err(KernelFileError::parse(path, "not a regular file"));
    }
    read_whole(std::fs::File::from(fd), path, max)
}

/// Reads an open file to its end — until a read returns nothing — at most `max` bytes.
/// Longer is an error, not a truncation: a cut-off file would parse as something it is not.
/// Public for the `state_file` fuzz target.
///
/// A short read is **not** the end: a `seq_file` of many records (a container's
/// `mountinfo`, `net/dev`, `cgroup.procs`) hands out about one page per read, however large
/// the buffer, so stopping at the first short read silently dropped every mount, interface
/// or task past the first 4 KiB. The closing empty read costs one cheap syscall per file.
pub fn read_whole(
    mut file: impl std::io::Read,
    path: &Path,
    max: usize,
) -> Result<Vec<u8>, KernelFileError> {
    let mut buf = vec![0u8; 4096.min(max + 1)];
    let mut len = 0;
    loop {
        match file.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => {
                len += n;
                if len > max {
                    return Err(KernelFileError::parse(
                        path,
                        format!("longer than {max} bytes"),
                    ));
                }
                if len == buf.len() {
                    buf.resize((buf.len() * 2).min(max + 1), 0);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // A FIFO or socket with nothing to read, opened non-blocking.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(KernelFileError::parse(path, "would block"))
            }
            Err(e) => return Err(io_error(path, e)),
        }
    }
    buf.truncate(len);
    Ok(buf)
}

fn text(bytes: Vec<u8>, path: &Path) -> Result<String, KernelFileError> {
    String::from_utf8(bytes).map_err(|_| KernelFileError::parse(path, "not UTF-8"))
}

/// A directory whose files the agent reads on every scrape (a container's cgroup directory,
/// its `/proc/<pid>`), held open with `O_PATH`: each read is then a one-component `openat`
/// instead of a walk of the whole path through `/sys/fs/cgroup/<controller>/…` with its mount
/// crossings — the larger part of opening a cgroup file from scratch. An `O_PATH` descriptor
/// pins no file content and no seq_file buffer (about 200 bytes of kernel memory), and does
/// not keep a cgroup from being removed: reads through it of a removed cgroup or an exited
/// process fail as [`KernelFileError::Gone`].
///
/// A `/proc/<pid>` directory opened this way also fixes the process's identity: if the pid is
/// reused later, reads through the old descriptor fail instead of reading the new process.
///
/// Descriptors come from a node-wide budget below the `RLIMIT_NOFILE` soft limit (see
/// [`set_dir_budget`]); past it, or when `open` fails, a `Dir` reads by path as before.
#[derive(Debug)]
pub struct Dir {
    path: PathBuf,
    fd: Option<std::os::fd::OwnedFd>,
}

/// Descriptors held by [`Dir`]s now, and the most they may hold.
static DIR_FDS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static DIR_BUDGET: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(4096);
static BUDGET_WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Sets how many descriptors [`Dir`]s may hold in all (the agent sets it from its file limit
/// at start, keeping a reserve for connections and everything else).
pub fn set_dir_budget(n: usize) {
    DIR_BUDGET.store(n, std::sync::atomic::Ordering::Relaxed);
}

/// How many descriptors [`Dir`]s may hold (see [`set_dir_budget`]).
pub fn dir_budget() -> usize {
    DIR_BUDGET.load(std::sync::atomic::Ordering::Relaxed)
}

/// Descriptors [`Dir`]s hold now (telemetry and tests).
pub fn dir_fds() -> usize {
    DIR_FDS.load(std::sync::atomic::Ordering::Relaxed)
}

impl Dir {
    /// Opens `path` for repeated reads; a `Dir` that reads by path when the directory cannot
    /// be held open (missing, or the descriptor budget is spent).
    pub fn open(path: PathBuf) -> Dir {
        use std::sync::atomic::Ordering::Relaxed;
        let fd = if DIR_FDS.fetch_add(1, Relaxed) < DIR_BUDGET.load(Relaxed) {
            use rustix::fs::{Mode, OFlags};
            let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
            rustix::fs::open(&path, flags, Mode::empty()).ok()
        } else {
            if !BUDGET_WARNED.swap(true, Relaxed) {
                tracing::warn!(
                    budget = DIR_BUDGET.load(Relaxed),
                    "directory descriptor budget spent (raise LimitNOFILE); further containers are read by path, which costs more CPU"
                );
            }
            None
        };
        if fd.is_none() {
            DIR_FDS.fetch_sub(1, Relaxed);
        }
        Dir { path, fd }
    }

    /// A `Dir` that always reads by path (nothing held open).
    pub fn unheld(path: PathBuf) -> Dir {
        Dir { path, fd: None }
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the directory is held open (reads are relative to it).
    pub fn is_held(&self) -> bool {
        self.fd.is_some()
    }

    /// The path of `name` in this directory, for messages and path-based calls.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Reads the whole file `name` (a relative path) as [`read`] does, with one difference
    /// on the hot path: no `fstat` to check for a regular file. A held directory is a
    /// cgroupfs or procfs directory, where nobody can create a FIFO, a device or a symlink,
    /// and `name` is one of the agent's own constants; the open still neither blocks nor
    /// follows a final symlink, and the read is still capped.
    pub fn read(&self, name: &str) -> Result<String, KernelFileError> {
        text(self.read_bytes(name)?, &self.join(name))
    }

    /// Reads the whole file `name` as bytes, for files whose text may not be UTF-8
    /// (`net/dev`: interface names are bytes to the kernel).
    pub fn read_bytes(&self, name: &str) -> Result<Vec<u8>, KernelFileError> {
        let Some(fd) = &self.fd else {
            return read_regular(&self.join(name), MAX_KERNEL_FILE);
        };
        let file = rustix::fs::openat(fd, name, open_flags(), rustix::fs::Mode::empty())
            .map_err(|e| io_error(&self.join(name), e.into()))?;
        read_whole(std::fs::File::from(file), &self.join(name), MAX_KERNEL_FILE)
    }

    /// Reads a file holding one unsigned number.
    pub fn read_u64(&self, name: &str) -> Result<u64, KernelFileError> {
        parse_u64(&self.read(name)?, &self.join(name))
    }

    /// Whether both are held and are the same directory (one reached through a symlink).
    pub fn same_as(&self, other: &Dir) -> bool {
        let (Some(a), Some(b)) = (&self.fd, &other.fd) else {
            return false;
        };
        match (rustix::fs::fstat(a), rustix::fs::fstat(b)) {
            (Ok(a), Ok(b)) => (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino),
            _ => false,
        }
    }

    /// Whether the directory has subdirectories: its link count is 2 plus their number,
    /// which cgroupfs keeps exact (one `fstat` of the held descriptor, no listing).
    pub fn has_subdirs(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        match &self.fd {
            Some(fd) => rustix::fs::fstat(fd).is_ok_and(|st| st.st_nlink > 2),
            None => std::fs::metadata(&self.path).is_ok_and(|m| m.nlink() > 2),
        }
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        if self.fd.is_some() {
            DIR_FDS.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// Maps an I/O error on `path`, classifying "it went away" separately.
pub fn io_error(path: &Path, e: io::Error) -> KernelFileError {
    let gone = e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(3 /* ESRCH */);
    if gone {
        KernelFileError::Gone(path.to_path_buf())
    } else {
        KernelFileError::Io {
            path: path.to_path_buf(),
            source: e,
        }
    }
}

/// Reads a file holding one unsigned number, or `max` (v2) / a v1 "unlimited" sentinel;
/// both give `None`.
pub fn read_limit(path: &Path) -> Result<Option<u64>, KernelFileError> {
    let text = read(path)?;
    parse_limit(text.trim())
        .ok_or_else(|| KernelFileError::parse(path, format!("not a limit: {text:?}")))
}

/// Parses `max` → `Some(None)`, a number → `Some(Some(n))`; v1 sentinels (≥ 2^62, e.g.
/// 9223372036854771712) and `-1` also mean unlimited. Anything else → `None`.
pub fn parse_limit(s: &str) -> Option<Option<u64>> {
    match s {
        "max" | "-1" => Some(None),
        _ => {
            let n: u64 = s.parse().ok()?;
            Some(if n >= 1 << 62 { None } else { Some(n) })
        }
    }
}

/// Reads a file holding one unsigned number.
pub fn read_u64(path: &Path) -> Result<u64, KernelFileError> {
    parse_u64(&read(path)?, path)
}

/// The one unsigned number `text` (of the file at `path`) holds.
fn parse_u64(text: &str, path: &Path) -> Result<u64, KernelFileError> {
    text.trim()
        .parse()
        .map_err(|_| KernelFileError::parse(path, format!("not a number: {text:?}")))
}

/// Iterates `KEY VALUE` lines (cgroup "flat keyed" files such as `cpu.stat`, `memory.stat`,
/// `memory.events`, `cpuacct.stat`), skipping lines that do not have a numeric value: new keys
/// may appear anywhere and must not break old readers.
pub fn flat_keyed(text: &str) -> impl Iterator<Item = (&str, u64)> {
    text.lines().filter_map(|line| {
        let mut it = line.split_ascii_whitespace();
        let key = it.next()?;
        let value = it.next()?.parse().ok()?;
        Some((key, value))
    })
}

/// Parses a CPU list such as `0-3,6,8-9` into the number of CPUs it names.
pub fn cpu_list_count(s: &str) -> Option<usize> {
    let s = s.trim();
    if s.is_empty() {
        return Some(0);
    }
    let mut n = 0usize;
    for part in s.split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                let a: usize = a.trim().parse().ok()?;
                let b: usize = b.trim().parse().ok()?;
                if b < a || b - a > 1 << 16 {
                    return None;
                }
                n += b - a + 1;
            }
            None => {
                part.trim().parse::<usize>().ok()?;
                n += 1;
            }
        }
    }
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits() {
        assert_eq!(parse_limit("max"), Some(None));
        assert_eq!(parse_limit("-1"), Some(None));
        assert_eq!(parse_limit("9223372036854771712"), Some(None));
        assert_eq!(parse_limit("67108864"), Some(Some(67108864)));
        assert_eq!(parse_limit("lots"), None);
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(cpu_list_count("0-3,6,8-9\n"), Some(7));
        assert_eq!(cpu_list_count("0"), Some(1));
        assert_eq!(cpu_list_count(""), Some(0));
        assert_eq!(cpu_list_count("3-1"), None);
        assert_eq!(cpu_list_count("x"), None);
    }

    #[test]
    fn flat_keyed_skips_odd_lines() {
        let v: Vec<_> = flat_keyed("usage_usec 10\nbogus\nnew_key x\nuser_usec 7\n").collect();
        assert_eq!(v, vec![("usage_usec", 10), ("user_usec", 7)]);
    }

    #[test]
    fn files_larger_than_the_first_buffer_are_read_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("big");
        let text: String = (0..3000).map(|i| format!("line{i} {i}\n")).collect();
        std::fs::write(&path, &text).expect("write");
        assert_eq!(read(&path).expect("read"), text);
        let exact = dir.path().join("exact");
        std::fs::write(&exact, "x".repeat(4096)).expect("write");
        assert_eq!(read(&exact).expect("read").len(), 4096);
        // A procfs seq_file of many pages (the kernel's symbol table, megabytes, stable
        // between two reads), read whole: every line, not the first buffer's worth.
        let symbols = Path::new("/proc/kallsyms");
        let ours = read(symbols).expect("kallsyms");
        assert!(ours.len() > 64 * 4096, "{} bytes", ours.len());
        let std_read = std::fs::read_to_string(symbols).expect("kallsyms");
        assert_eq!(ours.lines().count(), std_read.lines().count());
    }

    /// Serialises the tests that count descriptors or change the budget: both are
    /// process-wide, and `cargo test` runs tests on threads of one process.
    fn counting() -> std::sync::MutexGuard<'static, ()> {
        static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
        LOCK.lock().unwrap_or_else(|e| e.into_inner())
    }

    #[test]
    fn held_dirs_read_relative_and_see_removal_as_gone() {
        let _counting = counting();
        let base = dir_fds();
        let tmp = tempfile::tempdir().expect("tempdir");
        let sub = tmp.path().join("c1");
        std::fs::create_dir(&sub).expect("mkdir");
        std::fs::write(sub.join("n"), "42\n").expect("write");
        let link = tmp.path().join("alias");
        std::os::unix::fs::symlink(&sub, &link).expect("symlink");

        let dir = Dir::open(sub.clone());
        assert!(dir.is_held());
        assert_eq!(dir_fds(), base + 1);
        assert_eq!(dir.read_u64("n").expect("read"), 42);
        assert!(!dir.has_subdirs());
        std::fs::create_dir(sub.join("child")).expect("mkdir");
        assert!(dir.has_subdirs());
        assert!(
            dir.same_as(&Dir::open(link)),
            "one directory under two names"
        );
        assert_eq!(
            dir_fds(),
            base + 1,
            "the second handle's descriptor was returned"
        );

        // Renaming the path away does not matter to a held directory; removing it does.
        let moved = tmp.path().join("moved");
        std::fs::rename(&sub, &moved).expect("rename");
        assert_eq!(dir.read_u64("n").expect("still readable"), 42);
        std::fs::remove_dir_all(&moved).expect("rm");
        assert!(dir.read("n").expect_err("removed").is_gone());
        drop(dir);
        assert_eq!(dir_fds(), base);
    }

    #[test]
    fn past_the_budget_dirs_read_by_path() {
        let _counting = counting();
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::write(tmp.path().join("n"), "7").expect("write");
        let budget = DIR_BUDGET.load(std::sync::atomic::Ordering::Relaxed);
        let base = dir_fds();
        set_dir_budget(base + 1);
        let first = Dir::open(tmp.path().to_path_buf());
        let second = Dir::open(tmp.path().to_path_buf());
        assert!(first.is_held() && !second.is_held());
        assert_eq!(second.read_u64("n").expect("by path"), 7);
        assert_eq!(dir_fds(), base + 1);
        drop(first);
        assert!(
            Dir::open(tmp.path().to_path_buf()).is_held(),
            "budget freed"
        );
        set_dir_budget(budget);
        // A directory that does not exist is not held, and its reads are gone.
        let missing = Dir::open(tmp.path().join("nope"));
        assert!(!missing.is_held());
        assert!(missing.read("n").expect_err("missing").is_gone());
    }

    /// What a root user on the node (or a bug) can plant where the agent expects a file:
    /// each is refused at once, none blocks or floods.
    #[test]
    fn fifos_devices_symlinks_and_floods_are_refused_without_blocking() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let fifo = tmp.path().join("state.json");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo (coreutils)");
        assert!(made.success(), "mkfifo failed");
        let started = std::time::Instant::now();
        let e = read_regular(&fifo, MAX_STATE_FILE).expect_err("a FIFO");
        assert!(e.to_string().contains("not a regular file"), "{e}");
        let zero = tmp.path().join("zero");
        std::os::unix::fs::symlink("/dev/zero", &zero).expect("symlink");
        let e = read_regular(&zero, MAX_STATE_FILE).expect_err("a symlink");
        assert!(!e.is_gone(), "{e}");
        let e = read_regular(Path::new("/dev/zero"), MAX_STATE_FILE).expect_err("a device");
        assert!(e.to_string().contains("not a regular file"), "{e}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "nothing blocked"
        );

        let big = tmp.path().join("big");
        std::fs::write(&big, vec![b'x'; MAX_STATE_FILE + 1]).expect("write");
        let e = read_regular(&big, MAX_STATE_FILE).expect_err("too long");
        assert!(e.to_string().contains("longer than"), "{e}");
        std::fs::write(&big, vec![b'x'; MAX_STATE_FILE]).expect("write");
        assert_eq!(
            read_regular(&big, MAX_STATE_FILE)
                .expect("at the cap")
                .len(),
            MAX_STATE_FILE
        );

        // Through a held directory too: a symlink in the last component is not followed.
        let dir = Dir::open(tmp.path().to_path_buf());
        assert!(dir.is_held());
        assert!(dir.read("zero").is_err());
        let started = std::time::Instant::now();
        let _ = dir.read("state.json");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "a FIFO read through a held directory does not block"
        );
    }

    #[test]
    fn vanished_files_are_gone_not_errors() {
        let e = read(Path::new("/proc/999999999/stat")).expect_err("no such pid");
        assert!(e.is_gone(), "{e}");
    }
}
