//! Writing the Prometheus text format 0.0.4 and OpenMetrics 1.0, chosen by `Accept`.
//!
//! The node view is built per request from a snapshot with a dynamic set of families, which
//! `prometheus-client`'s registry model does not fit and whose encoder writes only
//! OpenMetrics; node_exporter's consumers expect 0.0.4 too. So the few rules of both formats
//! live here: HELP/TYPE once per family, samples of a family together, counters named
//! `…_total` (OpenMetrics: the family without the suffix), label values escaped, `# EOF`.

use std::fmt::Write;

/// An exposition format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `text/plain; version=0.0.4`.
    Text,
    /// `application/openmetrics-text; version=1.0.0`.
    OpenMetrics,
}

impl Format {
    /// Picks the format from an `Accept` header by q-value (OpenMetrics wins ties, as
    /// Prometheus asks for it first); text when absent or unparseable.
    pub fn negotiate(accept: Option<&str>) -> Format {
        let Some(accept) = accept else {
            return Format::Text;
        };
        let mut best = (Format::Text, -1.0f32);
        for item in accept.split(',') {
            let mut parts = item.split(';').map(str::trim);
            let media = parts.next().unwrap_or("").to_ascii_lowercase();
            let mut q = 1.0f32;
            let mut version = None;
            for p in parts {
                if let Some(v) = p.strip_prefix("q=") {
                    q = v.parse().unwrap_or(0.0);
                } else if let Some(v) = p.strip_prefix("version=") {
                    version = Some(v.to_string());
                }
            }
            let format = match media.as_str() {
                "application/openmetrics-text"
                    if version.as_deref().is_none_or(|v| v.starts_with("1.")) =>
                {
                    Format::OpenMetrics
                }
                "text/plain" | "*/*" | "text/*" => Format::Text,
                _ => continue,
            };
            let better = q > best.1 || (q == best.1 && format == Format::OpenMetrics);
            if q > 0.0 && better {
                best = (format, q);
            }
        }
        best.0
    }

    /// The `Content-Type` of a response in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// A metric type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Monotonic; the name must end in `_total`.
    Counter,
    /// Up and down.
    Gauge,
    /// Untyped (`unknown` in OpenMetrics), as node_exporter types `node_vmstat_*`.
    Untyped,
}

/// An exposition being written.
pub struct Exposition {
    out: String,
    format: Format,
}

impl Exposition {
    /// Starts an exposition with room for `capacity` bytes.
    pub fn new(format: Format, capacity: usize) -> Self {
        Exposition {
            out: String::with_capacity(capacity),
            format,
        }
    }

    /// Starts a family; write its samples before starting the next one.
    pub fn family<'a>(&'a mut self, name: &'a str, kind: Kind, help: &str) -> Family<'a> {
        let (family_name, type_name) = match (self.format, kind) {
            (Format::OpenMetrics, Kind::Counter) => {
                (name.strip_suffix("_total").unwrap_or(name), "counter")
            }
            (Format::OpenMetrics, Kind::Untyped) => (name, "unknown"),
            (_, Kind::Counter) => (name, "counter"),
            (_, Kind::Gauge) => (name, "gauge"),
            (Format::Text, Kind::Untyped) => (name, "untyped"),
        };
        let out = &mut self.out;
        out.push_str("# HELP ");
        out.push_str(family_name);
        out.push(' ');
        push_escaped(out, help, self.format == Format::OpenMetrics);
        out.push_str("\n# TYPE ");
        out.push_str(family_name);
        out.push(' ');
        out.push_str(type_name);
        out.push('\n');
        Family { w: self, name }
    }

    /// Ends the exposition.
    pub fn finish(mut self) -> String {
        if self.format == Format::OpenMetrics {
            self.out.push_str("# EOF\n");
        }
        self.out
    }
}

/// A family being written.
pub struct Family<'a> {
    w: &'a mut Exposition,
    name: &'a str,
}

impl Family<'_> {
    /// Writes one sample.
    pub fn sample(&mut self, labels: &[(&str, &str)], value: f64) -> &mut Self {
        let out = &mut self.w.out;
        out.push_str(self.name);
        if !labels.is_empty() {
            out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(k);
                out.push_str("=\"");
                push_escaped(out, v, true);
                out.push('"');
            }
            out.push('}');
        }
        out.push(' ');
        write_value(out, value);
        out.push('\n');
        self
    }
}

/// Appends `text` with `\\` and newline escaped, and `"` too when `quotes`. Most text has
/// nothing to escape and is copied whole.
fn push_escaped(out: &mut String, text: &str, quotes: bool) {
    let special = |b: u8| b == b'\\' || b == b'\n' || (quotes && b == b'"');
    let mut rest = text;
    while let Some(i) = rest.bytes().position(special) {
        out.push_str(&rest[..i]);
        out.push_str(match rest.as_bytes()[i] {
            b'\\' => "\\\\",
            b'\n' => "\\n",
            _ => "\\\"",
        });
        rest = &rest[i + 1..];
    }
    out.push_str(rest);
}

fn write_value(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        let _ = write!(out, "{}", v as i64);
    } else {
        let _ = write!(out, "{v}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiates_like_prometheus_asks() {
        let prom = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::negotiate(Some(prom)), Format::OpenMetrics);
        assert_eq!(
            Format::negotiate(Some("text/plain;version=0.0.4")),
            Format::Text
        );
        assert_eq!(Format::negotiate(None), Format::Text);
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text;q=0")),
            Format::Text
        );
        assert_eq!(Format::negotiate(Some("application/json")), Format::Text);
    }

    #[test]
    fn counters_follow_each_format() {
        let mut e = Exposition::new(Format::OpenMetrics, 0);
        e.family("x_seconds_total", Kind::Counter, "Help \"q\".")
            .sample(&[("a", "q\"\\\n")], 1.5);
        let om = e.finish();
        assert_eq!(
            om,
            "# HELP x_seconds Help \\\"q\\\".\n# TYPE x_seconds counter\nx_seconds_total{a=\"q\\\"\\\\\\n\"} 1.5\n# EOF\n"
        );
        let mut e = Exposition::new(Format::Text, 0);
        e.family("x_seconds_total", Kind::Counter, "h")
            .sample(&[], 3.0);
        e.family("y", Kind::Untyped, "h").sample(&[], f64::INFINITY);
        assert_eq!(
            e.finish(),
            "# HELP x_seconds_total h\n# TYPE x_seconds_total counter\nx_seconds_total 3\n# HELP y h\n# TYPE y untyped\ny +Inf\n"
        );
    }
}
