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

/// Reads a whole small file as text. `ENOENT`/`ESRCH` become [`KernelFileError::Gone`].
///
/// One `open` and, for a file that fits the buffer, one `read`: no `stat` for a size hint
/// (kernel files report size 0 or 4096 anyway), and no second `read` to see end of file.
/// procfs and cgroupfs files are `seq_file`s, which fill a read until the caller's buffer is
/// full or the content ends — so a short read is the end. This halves the syscalls of
/// `fs::read_to_string` on the agent's hottest path.
pub fn read(path: &Path) -> Result<String, KernelFileError> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).map_err(|e| io_error(path, e))?;
    let mut buf = vec![0u8; 4096];
    let mut len = 0;
    loop {
        match file.read(&mut buf[len..]) {
            Ok(n) => {
                len += n;
                if len < buf.len() {
                    break;
                }
                buf.resize(buf.len() * 2, 0);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_error(path, e)),
        }
    }
    buf.truncate(len);
    String::from_utf8(buf).map_err(|_| KernelFileError::parse(path, "not UTF-8"))
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
    let text = read(path)?;
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
        // A procfs seq_file over one page, read in one piece.
        let mounts = read(Path::new("/proc/self/mountinfo")).expect("mountinfo");
        assert!(crate::mountinfo::parse(&mounts).is_ok());
    }

    #[test]
    fn vanished_files_are_gone_not_errors() {
        let e = read(Path::new("/proc/999999999/stat")).expect_err("no such pid");
        assert!(e.is_gone(), "{e}");
    }
}
