//! Network interface counters from `/proc/<pid>/net/dev`, which shows the network namespace
//! of that process: the container's own interfaces, read from the host without entering it.

/// Counters of one interface.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NetDev {
    /// Interface name as the container sees it.
    pub device: String,
    /// Receive bytes, packets, errs, drop, fifo, frame, compressed, multicast.
    pub rx: [u64; 8],
    /// Transmit bytes, packets, errs, drop, fifo, colls, carrier, compressed.
    pub tx: [u64; 8],
    /// The kernel's name was not UTF-8; `device` shows it escaped ([`parse_bytes`]).
    pub escaped: bool,
}

/// node_exporter's names for the eight receive counters, in file order.
pub const RX_NAMES: [&str; 8] = [
    "bytes",
    "packets",
    "errs",
    "drop",
    "fifo",
    "frame",
    "compressed",
    "multicast",
];

/// node_exporter's names for the eight transmit counters, in file order.
pub const TX_NAMES: [&str; 8] = [
    "bytes",
    "packets",
    "errs",
    "drop",
    "fifo",
    "colls",
    "carrier",
    "compressed",
];

/// Parses the file: two header lines, then `name: 16 numbers` per interface.
pub fn parse(text: &str) -> Result<Vec<NetDev>, String> {
    parse_bytes(text.as_bytes())
}

/// [`parse`] over the file's bytes. Interface names are bytes to the kernel (anything but
/// `/`, `:`, whitespace and NUL), so a tenant can name one `\xff\xfeq`; such a name is shown
/// with each byte that is not UTF-8 written as `\xNN` ([`NetDev::escaped`] says so) instead
/// of failing the whole collector. Should the escaped form equal another interface's
/// name, the later one is left out, so no series is ever duplicated.
pub fn parse_bytes(text: &[u8]) -> Result<Vec<NetDev>, String> {
    let mut out: Vec<NetDev> = Vec::new();
    for (n, line) in text.split(|b| *b == b'\n').enumerate().skip(2) {
        if line.is_empty() {
            continue;
        }
        let colon = line
            .iter()
            .position(|b| *b == b':')
            .ok_or_else(|| format!("line {}: no ':'", n + 1))?;
        let (name, rest) = (&line[..colon], &line[colon + 1..]);
        let rest = std::str::from_utf8(rest)
            .map_err(|_| format!("line {}: counters are not text", n + 1))?;
        let mut values = [0u64; 16];
        let mut count = 0;
        for field in rest.split_ascii_whitespace() {
            if count == 16 {
                return Err(format!("line {}: more than 16 fields", n + 1));
            }
            values[count] = field
                .parse()
                .map_err(|_| format!("line {}: bad number {field:?}", n + 1))?;
            count += 1;
        }
        if count != 16 {
            return Err(format!("line {}: {count} fields, expected 16", n + 1));
        }
        let (device, escaped) = device_name(name.trim_ascii());
        if out.iter().any(|d| d.device == device) {
            continue;
        }
        let mut dev = NetDev {
            device,
            escaped,
            ..NetDev::default()
        };
        dev.rx.copy_from_slice(&values[..8]);
        dev.tx.copy_from_slice(&values[8..]);
        out.push(dev);
    }
    Ok(out)
}

/// The name as text, and whether bytes had to be escaped.
fn device_name(raw: &[u8]) -> (String, bool) {
    match std::str::from_utf8(raw) {
        Ok(s) => (s.to_string(), false),
        Err(_) => {
            let mut out = String::with_capacity(raw.len() * 2);
            for chunk in raw.utf8_chunks() {
                out.push_str(chunk.valid());
                for b in chunk.invalid() {
                    out.push_str(&format!("\\x{b:02x}"));
                }
            }
            (out, true)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_that_is_not_utf8_is_escaped_and_the_others_kept() {
        let mut file = SAMPLE.as_bytes().to_vec();
        file.extend_from_slice(b"\xff\xfeq: 5 1 0 0 0 0 0 0 6 1 0 0 0 0 0 0\n");
        // Its escaped form taken already: left out, never a duplicate series.
        file.extend_from_slice(b"\\xff\\xfeq: 1 1 0 0 0 0 0 0 1 1 0 0 0 0 0 0\n");
        let devs = parse_bytes(&file).expect("parses");
        let names: Vec<&str> = devs.iter().map(|d| d.device.as_str()).collect();
        assert_eq!(names, ["lo", "eth0", "\\xff\\xfeq"]);
        assert!(devs[2].escaped && !devs[1].escaped);
        assert_eq!(devs[2].rx[0], 5);
    }

    const SAMPLE: &str = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     100       2    0    0    0     0          0         0      100       2    0    0    0     0       0          0
  eth0: 1234567    890    1    2    3     4          5         6  7654321    432    7    8    9    10      11         12
";

    #[test]
    fn parses_interfaces() {
        let v = parse(SAMPLE).expect("valid");
        assert_eq!(v.len(), 2);
        assert_eq!(v[1].device, "eth0");
        assert_eq!(v[1].rx, [1234567, 890, 1, 2, 3, 4, 5, 6]);
        assert_eq!(v[1].tx, [7654321, 432, 7, 8, 9, 10, 11, 12]);
    }

    #[test]
    fn rejects_truncated_lines() {
        let bad = "h\nh\n eth0: 1 2 3\n";
        assert!(parse(bad).is_err());
        assert!(parse("h\nh\n eth0 1 2\n").is_err());
        assert_eq!(parse("h\nh\n").expect("no interfaces is fine"), vec![]);
    }
}
