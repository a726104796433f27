//! Rate limits on a fake clock: bursts, refill, overrides, the per-replica share and the
//! per-source limit. No sleeps. (The replica count read from a real DNS server: `dns.rs`.)

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use governor::clock::FakeRelativeClock;
use lookout_discovery::agents::resolve::Targets;
use lookout_proxy::limit::{replicas_in, source_key, RetryAfter, SourceLimiter, TenantLimiter};
use lookout_proxy::tenants::RateLimit;

fn rl(per_second: f64, burst: u32) -> RateLimit {
    RateLimit { per_second, burst }
}

/// How many immediate requests pass before the first refusal (bounded).
fn passes(mut f: impl FnMut() -> Result<(), RetryAfter>) -> usize {
    (0..10_000).take_while(|_| f().is_ok()).count()
}

#[test]
fn burst_then_429_then_refill() {
    let clock = FakeRelativeClock::default();
    let l = TenantLimiter::with_clock(rl(10.0, 5), BTreeMap::new(), 1, clock.clone());
    assert_eq!(passes(|| l.check("alice")), 5);
    let err = l.check("alice").expect_err("over the burst");
    // One cell every 100 ms.
    assert!(
        err.0 > Duration::ZERO && err.0 <= Duration::from_millis(100),
        "{err:?}"
    );
    assert_eq!(err.header_seconds(), 1);
    // Other tenants have their own bucket.
    assert_eq!(passes(|| l.check("bob")), 5);
    clock.advance(Duration::from_millis(100));
    assert!(l.check("alice").is_ok());
    assert!(l.check("alice").is_err());
    clock.advance(Duration::from_secs(10));
    assert_eq!(
        passes(|| l.check("alice")),
        5,
        "refilled to the burst, not beyond"
    );
}

#[test]
fn overrides_apply_per_tenant() {
    let clock = FakeRelativeClock::default();
    let overrides = BTreeMap::from([("big".to_string(), rl(1000.0, 50))]);
    let l = TenantLimiter::with_clock(rl(1.0, 2), overrides, 1, clock);
    assert_eq!(passes(|| l.check("big")), 50);
    assert_eq!(passes(|| l.check("small")), 2);
    let wait = l.check("small").expect_err("limited").0;
    assert!(
        wait > Duration::from_millis(900) && wait <= Duration::from_secs(1),
        "{wait:?}"
    );
}

#[test]
fn each_replica_enforces_its_share_and_the_count_is_updatable() {
    let clock = FakeRelativeClock::default();
    let l = TenantLimiter::with_clock(rl(30.0, 9), BTreeMap::new(), 3, clock.clone());
    assert_eq!(l.replicas(), 3);
    // burst 9 / 3 replicas = 3; rate 30 / 3 = 10/s.
    assert_eq!(passes(|| l.check("t")), 3);
    let wait = l.check("t").expect_err("limited").0;
    assert!(
        wait <= Duration::from_millis(100) && wait > Duration::from_millis(50),
        "{wait:?}"
    );
    l.set_replicas(1);
    assert_eq!(l.replicas(), 1);
    assert_eq!(passes(|| l.check("t")), 9);
    // Zero replicas is treated as one.
    l.set_replicas(0);
    assert_eq!(l.replicas(), 1);
    // A burst smaller than the replica count still allows one request.
    let l = TenantLimiter::with_clock(rl(1.0, 1), BTreeMap::new(), 5, clock);
    assert_eq!(passes(|| l.check("t")), 1);
}

#[test]
fn a_dns_answer_counts_its_distinct_targets_and_an_empty_one_is_an_error() {
    let answer = |targets: &[&str]| Targets {
        targets: targets.iter().map(|t| t.to_string()).collect(),
        ttl: None,
    };
    assert_eq!(
        replicas_in(&answer(&["10.0.0.1", "10.0.0.2", "10.0.0.3"])),
        Ok(3)
    );
    assert_eq!(replicas_in(&answer(&["p1.example:9163"])), Ok(1));
    // Nothing listed must not read as "1 replica" (each would then allow the whole rate).
    assert!(replicas_in(&answer(&[])).is_err());
}

#[test]
fn limits_are_replaced_on_reload() {
    let clock = FakeRelativeClock::default();
    let l = TenantLimiter::with_clock(rl(1.0, 1), BTreeMap::new(), 1, clock);
    assert_eq!(passes(|| l.check("t")), 1);
    l.set_limits(rl(1.0, 4), BTreeMap::from([("u".to_string(), rl(1.0, 7))]));
    assert_eq!(passes(|| l.check("t")), 4);
    assert_eq!(passes(|| l.check("u")), 7);
    l.housekeeping();
}

#[test]
fn sources_are_limited_before_authentication_and_v6_by_prefix() {
    let clock = FakeRelativeClock::default();
    let l = SourceLimiter::with_clock(rl(1.0, 3), clock.clone());
    let a: IpAddr = "192.0.2.1".parse().expect("ip");
    let b: IpAddr = "192.0.2.2".parse().expect("ip");
    assert_eq!(passes(|| l.check(a)), 3);
    assert_eq!(passes(|| l.check(b)), 3);
    // Two addresses in one /64 share a bucket.
    let v6a: IpAddr = "2001:db8:1:2::1".parse().expect("ip");
    let v6b: IpAddr = "2001:db8:1:2:ffff::9".parse().expect("ip");
    assert_eq!(passes(|| l.check(v6a)), 3);
    assert!(l.check(v6b).is_err());
    assert_eq!(l.tracked(), 3);
    clock.advance(Duration::from_secs(60));
    l.housekeeping();
    assert_eq!(l.tracked(), 0, "idle sources are forgotten");
    assert_eq!(
        source_key("::ffff:192.0.2.1".parse().expect("ip")),
        a,
        "IPv4-mapped addresses count as IPv4"
    );
}

#[test]
fn retry_after_rounds_up() {
    assert_eq!(RetryAfter(Duration::from_millis(1)).header_seconds(), 1);
    assert_eq!(RetryAfter(Duration::from_secs(2)).header_seconds(), 2);
    assert_eq!(RetryAfter(Duration::from_millis(2001)).header_seconds(), 3);
}
