//! The tenants file: acceptance of every credential form, and every refusal listed at once.

use lookout_proxy::tenants::{hex, parse_sha256, RateLimit, Role, Tenants};
use sha2::{Digest, Sha256};

/// Made with `ssh-keygen -t rsa -b 2048`; the SPKI hash with
/// `ssh-keygen -e -m PKCS8 | openssl pkey -pubin -outform DER | sha256sum`.
const RSA_KEY: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQCrNz+AFgCRQs002zJuBnXsd3HQ/xoV8CDwBeGyHzFhQUCA/49MWv0WdoLdm3YGVa68D0vdvorGHVtc76mlEkONCZu03wQUljKtx4886JNinh+0DorQlhkAdcregBeSGCAh2sXT1llW9NX6T0GB2vaxaupvW/04wnO62SA8eEi8XotMXdm/5iVjIn7jem7KY+1bij7eYVj7oOD8GphhKpB1OJatkseWGcxRVvVqHaN8BGLKa+ThRSPrV1aASOEtkIkgt1FDKOZe29rhwY/tvbH/N1r9/Zo6Q5sCNn7ycC1EiXjy9s7s5jphyepikZztwM94MWd3rx1BcySBh+MwTqsj test";
const RSA_SPKI: &str = "c07f2d890a7dc4a8508f7cb3a3c663eced654ecedb5c7ab4af17148380e91bfd";
/// Made with `ssh-keygen -t ecdsa -b 256`, hash as above.
const EC_KEY: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBD4nMHynsulg7wP9dW6vbea+gBN4PTQI15v/spvzm+Ij60Yq04ou8jeOLWnw4U6/qipwautl1wV16ntUJl68KUs= test";
const EC_SPKI: &str = "92ea9e8c968a9cf205dc2695c393d02f0bb0a3357e6985e04f544e1d3b72481c";

fn h(s: &str) -> [u8; 32] {
    parse_sha256(s).expect("test hash parses")
}

#[test]
fn a_full_file_is_parsed_and_indexed() {
    let token_hash = hex(&Sha256::digest(b"s3cret"));
    let text = format!(
        r#"
[defaults]
rate_limit = {{ per_second = 50.0, burst = 100 }}

[[tenant]]
name = "alice"
roles = ["operator"]
rate_limit = {{ per_second = 5.0, burst = 10 }}
cert_cn = ["alice", "alice.example.com"]
ssh_keys = ["{RSA_KEY}", "{EC_KEY}"]

[[tenant]]
name = "bob"
token_sha256 = ["{token_hash}"]
"#
    );
    let t = Tenants::parse(&text).expect("valid file");
    assert_eq!(t.tenants().len(), 2);
    assert_eq!(
        t.default_rate_limit(),
        RateLimit {
            per_second: 50.0,
            burst: 100
        }
    );
    let alice = t.by_name("alice").expect("alice");
    assert_eq!(alice.roles, vec![Role::Operator]);
    assert!(alice.is_operator());
    assert_eq!(
        t.by_cert_name("alice.example.com").map(|t| t.name.as_str()),
        Some("alice")
    );
    // SSH keys are indexed by the SPKI hash openssl computes for the same key.
    assert_eq!(
        t.by_spki(&h(RSA_SPKI)).map(|t| t.name.as_str()),
        Some("alice")
    );
    assert_eq!(
        t.by_spki(&h(EC_SPKI)).map(|t| t.name.as_str()),
        Some("alice")
    );
    assert_eq!(
        t.by_token_hash(&Sha256::digest(b"s3cret").into())
            .map(|t| t.name.as_str()),
        Some("bob")
    );
    // cert_cn defaults to the tenant's name.
    assert_eq!(t.by_cert_name("bob").map(|t| t.name.as_str()), Some("bob"));
    assert!(!t.by_name("bob").expect("bob").is_operator());
    assert_eq!(t.rate_overrides().len(), 1);
    assert!(t.by_cert_name("carol").is_none());
}

#[test]
fn an_empty_file_uses_cmon_defaults() {
    let t = Tenants::parse("").expect("empty is valid");
    assert_eq!(t.default_rate_limit(), RateLimit::DEFAULT);
    assert!(t.tenants().is_empty());
}

#[test]
fn hashes_in_hex_colons_and_base64_all_parse_to_the_same_value() {
    let raw: [u8; 32] = Sha256::digest(b"x").into();
    let hx = hex(&raw);
    let colons = raw
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":");
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(raw);
    let url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
    for form in [hx, colons, b64.clone(), url, format!("sha256//{b64}")] {
        assert_eq!(parse_sha256(&form), Ok(raw), "{form}");
    }
    assert!(parse_sha256("abcd").is_err());
    assert!(parse_sha256(&base64::engine::general_purpose::STANDARD.encode([0u8; 31])).is_err());
    assert!(parse_sha256("not base64 at all!").is_err());
}

#[test]
fn every_problem_is_listed() {
    let text = format!(
        r#"
[defaults]
rate_limit = {{ per_second = 0.0, burst = 0 }}

[revoked]
spki_sha256 = ["zz"]

[[tenant]]
name = "alice"
roles = ["admin"]
spki_sha256 = ["{RSA_SPKI}", "nope"]
token_sha256 = ["{RSA_SPKI}"]
ssh_keys = ["ssh-dss AAAAB3NzaC1kc3MAAACBAP", "from=\"10.0.0.1\" {EC_KEY}"]

[[tenant]]
name = "alice"
cert_cn = ["alice", ""]

[[tenant]]
name = "bad name!"
ssh_keys = ["{RSA_KEY}"]
token_sha256 = ["{RSA_SPKI}"]
rate_limit = {{ per_second = -1.0, burst = 5 }}
"#
    );
    let err = Tenants::parse(&text).expect_err("invalid file");
    let all = err.problems.join("\n");
    for needle in [
        "defaults.rate_limit.per_second",
        "defaults.rate_limit.burst",
        "revoked.spki_sha256[0]",
        "unknown role \"admin\"",
        "spki_sha256[1]",
        "ssh_keys[0]",
        "options are not supported",
        "name is used by more than one tenant",
        "cert_cn \"\"",
        "cert_cn \"alice\" is also registered to tenant \"alice\"",
        "tenant \"bad name!\": name must be",
        "key c07f2d890a7dc4a8… is also registered to tenant \"alice\"",
        "is also registered to tenant \"alice\"",
        "token c07f2d890a7dc4a8…",
        "rate_limit.per_second must be a positive number",
    ] {
        assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
    }
    assert!(err.problems.len() >= 14, "{all}");
    assert!(err.to_string().starts_with("invalid tenants file <text>:"));
}

#[test]
fn unknown_fields_and_bad_toml_are_refused() {
    let e = Tenants::parse("[[tenant]]\nname = \"a\"\ncert_cns = []\n").expect_err("typo");
    assert!(e.problems[0].contains("cert_cns"), "{:?}", e.problems);
    assert!(Tenants::parse("[[tenant]\n").is_err());
    assert!(
        Tenants::parse("[[tenant]]\nroles = []\n").is_err(),
        "name is required"
    );
}

#[test]
fn small_rsa_keys_are_refused() {
    // A 1024-bit key made with ssh-keygen -t rsa -b 1024.
    let small = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQDNxTDeJh8jj9dHqmjhCYNo5Qs1oSHj7SBQck0L4RHOLnu2M7tEqp1IoAxptiESeXh9fZlANWdopqJ2KdwPc1vNfVh0RsmvDROJn41jBcuxzu1TlRui2ZHME8iduQC3BTDie0ZXmtNDzzXzkab8O+0O23kQkzlt3OMgal5qA0OPuw== x";
    let e = Tenants::parse(&format!(
        "[[tenant]]\nname = \"a\"\nssh_keys = [\"{small}\"]\n"
    ))
    .expect_err("1024-bit RSA");
    assert!(e.problems[0].contains("1024 bits"), "{:?}", e.problems);
}

#[test]
fn loading_a_missing_file_names_it() {
    let e = Tenants::load(std::path::Path::new("/nonexistent/tenants.toml")).expect_err("missing");
    assert_eq!(e.source_name, "/nonexistent/tenants.toml");
    assert!(e.problems[0].starts_with("cannot read"));
}
