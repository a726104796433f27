//! `host_sni`: the Host header and TLS SNI through `lookout_proxy::host::HostRules`.

use std::net::{IpAddr, Ipv6Addr};
use std::sync::OnceLock;

use lookout_discovery::is_dns_label;
use lookout_proxy::host::{HostError, HostRules, Route};
use lookout_proxy::refusal::{self, Refusal};

use super::text;

/// A Host/SNI rule set, with the names it was built from (`HostRules` keeps them private).
struct Rules {
    rules: HostRules,
    /// Base names, lowercased, without the root dot.
    bases: Vec<String>,
    /// The instance zone, lowercased, without the root dot.
    suffix: String,
    ip_is_base: bool,
}

/// The deployments the proxy's docs and `lookout dev` describe: base = suffix; a separate
/// instance zone with a `localhost` alias and IP literals as the base; a base inside the zone.
fn fixed_rules() -> &'static [Rules] {
    static RULES: OnceLock<Vec<Rules>> = OnceLock::new();
    RULES.get_or_init(|| {
        // Invariant: these are valid DNS names, so the builders cannot fail.
        let same = HostRules::new("lookout.example.com", "lookout.example.com")
            .expect("valid fixed rules");
        let split = HostRules::new("Lookout.Example.COM.", "i.example.com")
            .and_then(|r| r.with_base_alias("localhost"))
            .expect("valid fixed rules")
            .ip_literals_are_base(true);
        let inside = HostRules::new("cmon.example.com", "example.com").expect("valid fixed rules");
        let names = |b: &[&str]| b.iter().map(|s| s.to_string()).collect();
        vec![
            Rules {
                rules: same,
                bases: names(&["lookout.example.com"]),
                suffix: "lookout.example.com".into(),
                ip_is_base: false,
            },
            Rules {
                rules: split,
                bases: names(&["lookout.example.com", "localhost"]),
                suffix: "i.example.com".into(),
                ip_is_base: true,
            },
            Rules {
                rules: inside,
                bases: names(&["cmon.example.com"]),
                suffix: "example.com".into(),
                ip_is_base: false,
            },
        ]
    })
}

/// Host header and TLS SNI. Line 1 is the Host value, line 2 the SNI (empty: none); when a
/// line 3 is present it is the base name and line 4 (else line 3 again) the instance zone of
/// one more rule set, built from the input.
///
/// Invariants: an instance route's id is a DNS label, and `<id>.<suffix>` routes back to it;
/// once the Host parses, every spelling of its name — any case, any valid port, with the root
/// dot, with an SNI naming it in any case — gives the same outcome, and any other SNI is 421;
/// Host problems (400) come before SNI ones (421); `Unknown` names are really outside the
/// rules; each refusal maps to its status in `refusal::status`. A rule set that builds
/// routes its own base name to the base and `<label>.<suffix>` to that label.
pub fn host_sni(data: &[u8]) {
    let t = text(data);
    let mut lines = t.split('\n');
    let host = lines.next().unwrap_or_default();
    let sni = lines.next().filter(|s| !s.is_empty());
    let custom = lines
        .next()
        .map(|base| (base, lines.next().unwrap_or(base)));

    for r in fixed_rules() {
        assert_eq!(r.rules.route(None, sni), Err(HostError::Missing));
        check_route(r, host, sni);
        if sni.is_some() {
            check_route(r, host, None);
        }
    }
    if let Some((base, suffix)) = custom {
        check_custom_rules(base, suffix, host, sni);
    }
}

/// A route result with `Malformed`'s echo of the raw Host dropped: spellings of one malformed
/// Host echo differently but must be refused alike.
fn outcome(r: &Result<Route, HostError>) -> Result<Route, HostError> {
    match r {
        Err(HostError::Malformed(_)) => Err(HostError::Malformed(String::new())),
        other => other.clone(),
    }
}

/// Lowercased, one root dot dropped: how a host name compares.
fn norm_name(s: &str) -> String {
    let lower = s.to_ascii_lowercase();
    lower.strip_suffix('.').unwrap_or(&lower).to_string()
}

/// A lowercase DNS name as the proxy accepts one: labels of [`is_dns_label`], at most 253
/// characters.
fn is_dns_name(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

fn check_route(r: &Rules, host: &str, sni: Option<&str>) {
    let got = r.rules.route(Some(host), sni);
    assert_eq!(
        got,
        r.rules.route(Some(host), sni),
        "routing is deterministic"
    );

    match &got {
        Ok(Route::Instance(id)) => {
            assert!(is_dns_label(id), "instance id {id:?} is not a DNS label");
            let name = format!("{id}.{}", r.suffix);
            assert!(
                !r.bases.contains(&name),
                "base name {name:?} routed as an instance"
            );
        }
        Ok(Route::Base) => {}
        Err(HostError::Missing) => panic!("Missing with a Host {host:?}"),
        Err(HostError::Malformed(echo)) => {
            assert!(echo.chars().count() <= 100, "echo of {} chars", echo.len());
            assert!(host.starts_with(echo.as_str()), "echo {echo:?} of {host:?}");
        }
        Err(HostError::Misdirected {
            sni: said,
            host: name,
        }) => {
            let given = sni.expect("421 without an SNI");
            assert_eq!(*said, norm_name(given), "SNI reported as {said:?}");
            assert_ne!(said, name, "421 for an SNI that names the Host");
        }
        Err(HostError::Unknown(name)) => {
            if name.parse::<IpAddr>().is_ok() {
                assert!(!r.ip_is_base, "IP {name:?} unknown though IPs are the base");
            } else {
                assert!(is_dns_name(name), "unknown name {name:?} is not a DNS name");
                assert!(!r.bases.contains(name), "base name {name:?} unknown");
                if let Some((label, zone)) = name.split_once('.') {
                    assert!(
                        zone != r.suffix || !is_dns_label(label),
                        "instance name {name:?} unknown"
                    );
                }
            }
        }
    }
    if let Err(e) = &got {
        let want = match e {
            HostError::Missing | HostError::Malformed(_) => 400,
            HostError::Misdirected { .. } => 421,
            HostError::Unknown(_) => 404,
        };
        assert_eq!(
            refusal::status(&Refusal::Host(e.clone())),
            (want, None),
            "{e:?}"
        );
    }

    // Case never matters, in the Host nor in the SNI.
    let upper = sni.map(str::to_ascii_uppercase);
    let shouted = r
        .rules
        .route(Some(&host.to_ascii_uppercase()), upper.as_deref());
    assert_eq!(outcome(&shouted), outcome(&got), "upper-cased {host:?}");

    let alone = r.rules.route(Some(host), None);
    // "-" is never a host name, so it is a 421 exactly when the Host parsed, and the 421
    // reports the name the Host was parsed to.
    let probe = r.rules.route(Some(host), Some("-"));
    let Err(HostError::Misdirected { host: name, .. }) = probe else {
        assert!(
            matches!(probe, Err(HostError::Malformed(_))),
            "{host:?} with SNI \"-\": {probe:?}"
        );
        assert_eq!(
            got, alone,
            "an SNI changed how an unparsable Host is refused"
        );
        return;
    };
    assert!(
        matches!(alone, Ok(_) | Err(HostError::Unknown(_))),
        "{host:?} parsed to {name:?}, then {alone:?}"
    );
    if !matches!(got, Err(HostError::Misdirected { .. })) {
        assert_eq!(got, alone, "an agreeing SNI {sni:?} changed the outcome");
    }

    // Every spelling of the name routes alike, with or without an SNI that names it.
    let (forms, snis) = spellings(&name);
    for form in &forms {
        assert_eq!(
            r.rules.route(Some(form), None),
            alone,
            "{form:?} (from {host:?})"
        );
        for s in &snis {
            assert_eq!(
                r.rules.route(Some(form), Some(s)),
                alone,
                "{form:?} with SNI {s:?}"
            );
        }
        let has_port = match form.strip_prefix('[') {
            Some(v6) => v6.contains("]:"),
            None => form.contains(':'),
        };
        for bad_port in [":0", ":65536", ":", ":+1", ":0x50"] {
            let bad = format!("{form}{bad_port}");
            if !has_port {
                assert!(
                    matches!(
                        r.rules.route(Some(&bad), None),
                        Err(HostError::Malformed(_))
                    ),
                    "port in {bad:?} accepted"
                );
            }
        }
    }
    if let Ok(Route::Instance(id)) = &alone {
        let name = format!("{id}.{}", r.suffix);
        assert_eq!(r.rules.route(Some(&name), None), alone, "{name:?}");
    }
}

/// Host headers and SNIs that name `name` (as a 421 reports it): any case, valid ports, the
/// root dot; IPv6 in brackets.
fn spellings(name: &str) -> (Vec<String>, Vec<String>) {
    let upper = name.to_ascii_uppercase();
    if name.parse::<Ipv6Addr>().is_ok() {
        let forms = vec![
            format!("[{name}]"),
            format!("[{upper}]:9163"),
            format!("[{name}]:1"),
        ];
        return (forms, vec![name.to_string()]);
    }
    let snis = vec![name.to_string(), upper.clone(), format!("{upper}.")];
    if name.parse::<IpAddr>().is_ok() {
        let forms = vec![name.to_string(), format!("{name}:9163")];
        return (forms, snis);
    }
    let forms = vec![
        name.to_string(),
        upper.clone(),
        format!("{name}."),
        format!("{upper}.:9163"),
        format!("{name}:65535"),
        format!("{name}:00443"),
    ];
    (forms, snis)
}

fn check_custom_rules(base: &str, suffix: &str, host: &str, sni: Option<&str>) {
    let rules = match HostRules::new(base, suffix) {
        Ok(rules) => rules,
        Err(e) => {
            assert!(matches!(e, HostError::Malformed(_)), "{e:?}");
            return;
        }
    };
    let r = Rules {
        rules,
        bases: vec![norm_name(base)],
        suffix: norm_name(suffix),
        ip_is_base: false,
    };
    assert!(is_dns_name(&r.bases[0]), "base {base:?} accepted");
    assert!(is_dns_name(&r.suffix), "suffix {suffix:?} accepted");
    // The configured names route: the base to the base, `<label>.<suffix>` to the label.
    for b in [
        base.to_string(),
        format!("{}:9163", base.to_ascii_uppercase()),
    ] {
        assert_eq!(r.rules.route(Some(&b), None), Ok(Route::Base), "base {b:?}");
        assert_eq!(
            r.rules.route(Some(&b), Some(base)),
            Ok(Route::Base),
            "base {b:?} with SNI {base:?}"
        );
    }
    for label in ["a", "0", "web-1", &"z".repeat(63)] {
        let name = format!("{label}.{}", r.suffix);
        if name.len() > 253 {
            continue;
        }
        let want = if r.bases.contains(&name) {
            Route::Base
        } else {
            Route::Instance(label.to_string())
        };
        assert_eq!(
            r.rules.route(Some(&name), None),
            Ok(want),
            "{name:?} under base {base:?}, suffix {suffix:?}"
        );
    }
    check_route(&r, host, sni);
    if sni.is_some() {
        check_route(&r, host, None);
    }
}
