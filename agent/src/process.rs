//! A process as procfs shows it from the host: `/proc/<pid>/stat` (state, start time) and
//! `/proc/<pid>/cgroup` (where it sits in each hierarchy).

use std::path::Path;

use crate::kernel_file::{self, KernelFileError};

/// The fields of `/proc/<pid>/stat` the agent uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// Scheduler state letter (`R`, `S`, `D`, …), field 3.
    pub state: u8,
    /// Start time in clock ticks since boot, field 22. runc records the same value in
    /// `init_process_start` to detect pid reuse.
    pub start_ticks: u64,
}

/// Parses `/proc/<pid>/stat` content. The command name (field 2) may contain spaces and
/// parentheses, so fields are counted after the *last* `)`.
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    let state = *fields.next()?.as_bytes().first()?;
    // After the state (field 3), field 22 is the 19th more.
    let start_ticks = fields.nth(18)?.parse().ok()?;
    Some(ProcStat { state, start_ticks })
}

/// Reads and parses a stat file (of a process or of a thread under `task/`).
pub fn read_stat(path: &Path) -> Result<ProcStat, KernelFileError> {
    let text = kernel_file::read(path)?;
    parse_stat(&text).ok_or_else(|| KernelFileError::parse(path, "malformed stat"))
}

/// The stat of the process whose `/proc/<pid>` is held in `dir`.
pub fn stat_in(dir: &crate::kernel_file::Dir) -> Result<ProcStat, KernelFileError> {
    let text = dir.read("stat")?;
    parse_stat(&text).ok_or_else(|| KernelFileError::parse(&dir.join("stat"), "malformed stat"))
}

/// One line of `/proc/<pid>/cgroup`: `hierarchy-id:controller,list:/path`. The v2 line has an
/// empty controller list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupLine {
    /// Controllers of this hierarchy (`name=systemd` included as is); empty for v2.
    pub controllers: Vec<String>,
    /// Path relative to the hierarchy's root, starting with `/`.
    pub path: String,
}

/// Parses `/proc/<pid>/cgroup`; malformed lines are an error (the kernel never writes them).
pub fn parse_cgroup(text: &str) -> Option<Vec<CgroupLine>> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|line| {
            let mut parts = line.splitn(3, ':');
            let _id = parts.next()?;
            let ctrls = parts.next()?;
            let path = parts.next()?;
            if !path.starts_with('/') {
                return None;
            }
            Some(CgroupLine {
                controllers: ctrls
                    .split(',')
                    .filter(|c| !c.is_empty())
                    .map(str::to_string)
                    .collect(),
                path: path.to_string(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_hostile_comm() {
        let s =
            "4242 (a) b) (c) S 1 4242 4242 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 1 0 9631 1234 56";
        assert_eq!(
            parse_stat(s),
            Some(ProcStat {
                state: b'S',
                start_ticks: 9631
            })
        );
        assert_eq!(parse_stat("1 (x) R 1 2"), None);
        assert_eq!(parse_stat(""), None);
    }

    #[test]
    fn own_stat_parses() {
        let me = read_stat(Path::new("/proc/self/stat")).expect("own stat");
        assert!(b"RSDTtI".contains(&me.state), "state {}", me.state as char);
        assert!(me.start_ticks > 0);
    }

    #[test]
    fn cgroup_lines() {
        let v = parse_cgroup("4:memory:/a/b\n2:cpu,cpuacct:/x\n0::/lookout/c1\n").expect("valid");
        assert_eq!(v[0].controllers, ["memory"]);
        assert_eq!(v[1].controllers, ["cpu", "cpuacct"]);
        assert!(v[2].controllers.is_empty());
        assert_eq!(v[2].path, "/lookout/c1");
        assert!(parse_cgroup("garbage").is_none());
    }
}
