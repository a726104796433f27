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
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate().skip(2) {
        let (name, rest) = line
            .split_once(':')
            .ok_or_else(|| format!("line {}: no ':'", n + 1))?;
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
        let mut dev = NetDev {
            device: name.trim().to_string(),
            ..NetDev::default()
        };
        dev.rx.copy_from_slice(&values[..8]);
        dev.tx.copy_from_slice(&values[8..]);
        out.push(dev);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

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
