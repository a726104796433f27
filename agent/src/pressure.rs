//! Pressure stall information (PSI): `cpu.pressure`, `memory.pressure`, `io.pressure`,
//! `irq.pressure` in a v2 cgroup directory.

/// Cumulative stall totals in microseconds. `full` is absent for cpu on older kernels.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stall {
    /// Time at least one task was stalled (`some total=`).
    pub some_us: Option<u64>,
    /// Time all non-idle tasks were stalled (`full total=`).
    pub full_us: Option<u64>,
}

/// Parses `some avg10=… avg60=… avg300=… total=N` / `full …` lines.
pub fn parse(text: &str) -> Result<Stall, String> {
    let mut stall = Stall::default();
    for line in text.lines().filter(|l| !l.is_empty()) {
        let mut fields = line.split_ascii_whitespace();
        let kind = fields.next().ok_or("empty line")?;
        let total = fields
            .find_map(|f| f.strip_prefix("total="))
            .ok_or_else(|| format!("{kind}: no total"))?
            .parse::<u64>()
            .map_err(|_| format!("{kind}: bad total"))?;
        match kind {
            "some" => stall.some_us = Some(total),
            "full" => stall.full_us = Some(total),
            other => return Err(format!("unknown line {other:?}")),
        }
    }
    if stall.some_us.is_none() && stall.full_us.is_none() {
        return Err("no some/full lines".into());
    }
    Ok(stall)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_lines() {
        let s = parse(
            "some avg10=0.00 avg60=0.10 avg300=0.05 total=123456\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=789\n",
        )
        .expect("valid");
        assert_eq!(s.some_us, Some(123456));
        assert_eq!(s.full_us, Some(789));
        assert!(parse("").is_err());
        assert!(parse("some avg10=1").is_err());
        assert!(parse("weird total=1").is_err());
    }
}
