//! Mounts as a process sees them, from `/proc/<pid>/mountinfo`.

/// One mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Mount point inside the process's mount namespace (octal escapes decoded).
    pub mountpoint: String,
    /// Filesystem type.
    pub fstype: String,
    /// Mount source (`device` in node_exporter).
    pub device: String,
    /// True when mounted read-only (per-mount option `ro`).
    pub readonly: bool,
}

/// Parses mountinfo: `id parent maj:min root mountpoint options [optional…] - fstype source
/// superoptions`.
pub fn parse(text: &str) -> Result<Vec<Mount>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(n, line)| parse_line(line).ok_or_else(|| format!("line {}: malformed", n + 1)))
        .collect()
}

fn parse_line(line: &str) -> Option<Mount> {
    let (left, right) = line.split_once(" - ")?;
    let left: Vec<&str> = left.split(' ').collect();
    if left.len() < 6 {
        return None;
    }
    let mut right = right.split(' ');
    let fstype = right.next()?;
    let device = right.next()?;
    Some(Mount {
        mountpoint: unescape(left[4]),
        fstype: unescape(fstype),
        device: unescape(device),
        readonly: left[5].split(',').any(|o| o == "ro"),
    })
}

/// Decodes the kernel's `\NNN` octal escapes (space, tab, newline, backslash).
fn unescape(s: &str) -> String {
    if !s.contains('\\') {
        return s.to_string();
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let oct = &bytes[i + 1..i + 4];
            if oct.iter().all(|b| (b'0'..=b'7').contains(b)) {
                let v = oct
                    .iter()
                    .fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
                if let Ok(v) = u8::try_from(v) {
                    out.push(v);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_overlay_root_and_volume() {
        let text = "\
1082 1040 0:97 / / rw,relatime master:1 - overlay overlay rw,lowerdir=/l,upperdir=/u
1083 1082 0:99 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
1090 1082 8:1 /vol /data\\040dir ro,relatime - ext4 /dev/sda1 rw
";
        let m = parse(text).expect("valid");
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].mountpoint, "/");
        assert_eq!(m[0].fstype, "overlay");
        assert!(!m[0].readonly);
        assert_eq!(m[2].mountpoint, "/data dir");
        assert_eq!(m[2].device, "/dev/sda1");
        assert!(m[2].readonly);
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse("not a mountinfo line").is_err());
        assert!(parse("1 2 3 - x").is_err());
        assert_eq!(unescape("a\\0"), "a\\0");
        assert_eq!(unescape("\\"), "\\");
    }
}
