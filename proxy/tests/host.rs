//! Host/SNI routing: every acceptance and refusal path.

use lookout_proxy::host::{HostError, HostRules, Route};

fn rules() -> HostRules {
    HostRules::new("lookout.example.com", "Lookout.Example.COM.").expect("valid rules")
}

fn inst(id: &str) -> Result<Route, HostError> {
    Ok(Route::Instance(id.into()))
}

#[test]
fn base_and_instances_route_case_insensitively_with_ports() {
    let r = rules();
    assert_eq!(r.route(Some("lookout.example.com"), None), Ok(Route::Base));
    assert_eq!(
        r.route(Some("LOOKOUT.example.com:9163"), None),
        Ok(Route::Base)
    );
    assert_eq!(r.route(Some("lookout.example.com."), None), Ok(Route::Base));
    assert_eq!(
        r.route(Some("web-1.lookout.example.com"), None),
        inst("web-1")
    );
    // Lowercased once: the id handed on is lowercase, whatever the client sent.
    assert_eq!(
        r.route(
            Some("AD466FBF-46A2-4027-9B64-8D3CDB7E9072.Lookout.Example.Com:9163"),
            Some("ad466fbf-46a2-4027-9b64-8d3cdb7e9072.lookout.example.com")
        ),
        inst("ad466fbf-46a2-4027-9b64-8d3cdb7e9072")
    );
}

#[test]
fn sni_must_agree_with_host() {
    let r = rules();
    assert_eq!(
        r.route(
            Some("a.lookout.example.com"),
            Some("A.LOOKOUT.example.com.")
        ),
        inst("a")
    );
    assert_eq!(
        r.route(
            Some("a.lookout.example.com:9163"),
            Some("b.lookout.example.com")
        ),
        Err(HostError::Misdirected {
            sni: "b.lookout.example.com".into(),
            host: "a.lookout.example.com".into()
        })
    );
    assert!(matches!(
        r.route(Some("lookout.example.com"), Some("a.lookout.example.com")),
        Err(HostError::Misdirected { .. })
    ));
}

#[test]
fn malformed_hosts_are_400_class() {
    let r = rules();
    assert_eq!(r.route(None, None), Err(HostError::Missing));
    for bad in [
        "",
        "a b.lookout.example.com",
        "a_b.lookout.example.com",
        "lookout.example.com:",
        "lookout.example.com:http",
        "lookout.example.com:70000",
        "lookout.example.com:0",
        "a..lookout.example.com",
        "-a.lookout.example.com",
        "[::1",
        "[::1]x",
        "[zz::1]:80",
        "é.lookout.example.com",
        "user@lookout.example.com",
    ] {
        assert!(
            matches!(r.route(Some(bad), None), Err(HostError::Malformed(_))),
            "{bad:?} -> {:?}",
            r.route(Some(bad), None)
        );
    }
    let long = format!("{}.lookout.example.com", "a".repeat(64));
    assert!(matches!(
        r.route(Some(&long), None),
        Err(HostError::Malformed(_))
    ));
}

#[test]
fn names_outside_the_suffix_are_unknown() {
    let r = rules();
    for other in [
        "example.com",
        "a.b.lookout.example.com",
        "a.lookout.example.org",
        "lookout.example.com.evil.com",
        "localhost:9163",
    ] {
        assert!(
            matches!(r.route(Some(other), None), Err(HostError::Unknown(_))),
            "{other:?} -> {:?}",
            r.route(Some(other), None)
        );
    }
}

#[test]
fn ip_literals_are_base_only_when_configured() {
    let r = rules();
    assert!(matches!(
        r.route(Some("127.0.0.1:9163"), None),
        Err(HostError::Unknown(_))
    ));
    assert!(matches!(
        r.route(Some("[::1]:9163"), None),
        Err(HostError::Unknown(_))
    ));
    let r = rules().ip_literals_are_base(true);
    assert_eq!(r.route(Some("127.0.0.1:9163"), None), Ok(Route::Base));
    assert_eq!(r.route(Some("[::1]:9163"), None), Ok(Route::Base));
    assert_eq!(r.route(Some("[::1]"), None), Ok(Route::Base));
    assert_eq!(r.route(Some("10.1.2.3"), Some("10.1.2.3")), Ok(Route::Base));
}

#[test]
fn base_aliases_and_a_base_inside_the_suffix() {
    let r = HostRules::new("lookout.example.com", "i.example.com")
        .and_then(|r| r.with_base_alias("LocalHost"))
        .expect("valid rules");
    assert_eq!(r.route(Some("localhost:9163"), None), Ok(Route::Base));
    assert_eq!(r.route(Some("x.i.example.com"), None), inst("x"));
    assert!(matches!(
        r.route(Some("x.lookout.example.com"), None),
        Err(HostError::Unknown(_))
    ));
    // A base name that is itself `<label>.<suffix>` is the base, not an instance.
    let r = HostRules::new("cmon.example.com", "example.com").expect("valid rules");
    assert_eq!(r.route(Some("cmon.example.com"), None), Ok(Route::Base));
    assert_eq!(r.route(Some("web.example.com"), None), inst("web"));
    assert!(HostRules::new("bad name", "example.com").is_err());
}
