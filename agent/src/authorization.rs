//! The agent's own check that a scrape is for the container the proxy authorized.
//!
//! The proxy authorizes a tenant against its copy of the inventory, which can be stale (an
//! id reused by another tenant since the last watch event, an agent restarted while the
//! proxy's stream was down) or wrong (a compromised node claiming another node's instance).
//! So the proxy also says, in [`TENANT_HEADER`] and [`GENERATION_HEADER`], whom it
//! authorized and which incarnation it routed to, and the agent serves the view only when
//! the **live** container it is about to collect from matches. The check and the collection
//! use the same tracked container, whose `/proc/<pid>` is held open: a container replaced
//! after the check fails its collection as gone (404) rather than serving the newcomer.
//!
//! A request without the tenant header is refused too: every proxy sends it, so its absence
//! means an old proxy or a hand-made request, and either could leak.

use http::HeaderMap;
use lookout_discovery::{Instance, GENERATION_HEADER, TENANT_HEADER};

/// Why a scrape was refused (each answered 404, like a missing instance).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No (or an unreadable) tenant header.
    NoTenant,
    /// The live container belongs to another tenant, or to none.
    OtherTenant,
    /// The live container is another incarnation of the id than the one routed to.
    OtherGeneration,
}

impl Refusal {
    /// The label value of `lookout_agent_scrapes_refused_total`.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::NoTenant => "no_tenant",
            Refusal::OtherTenant => "other_tenant",
            Refusal::OtherGeneration => "other_generation",
        }
    }
}

/// Whether a request with `headers` may see the view of `live`.
///
/// A generation header is optional (sources such as a static file do not know
/// generations); when present it must match exactly.
pub fn check(headers: &HeaderMap, live: &Instance) -> Result<(), Refusal> {
    let tenant = headers
        .get(TENANT_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|t| !t.is_empty())
        .ok_or(Refusal::NoTenant)?;
    if live.tenant.as_deref() != Some(tenant) {
        return Err(Refusal::OtherTenant);
    }
    match headers.get(GENERATION_HEADER) {
        None => Ok(()),
        Some(g) if g.as_bytes() == live.generation.as_bytes() => Ok(()),
        Some(_) => Err(Refusal::OtherGeneration),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(tenant: Option<&str>) -> Instance {
        Instance {
            id: "churn".into(),
            runtime_id: "churn".into(),
            generation: "00000000000000a1".into(),
            node: "n".into(),
            tenant: tenant.map(str::to_string),
            alias: "churn".into(),
            groups: vec![],
            image: None,
            source: "runc".into(),
            labels: Default::default(),
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().expect("header value"));
        }
        h
    }

    #[test]
    fn only_the_owner_of_the_live_incarnation_is_served() {
        let acme = live(Some("acme"));
        assert_eq!(check(&headers(&[(TENANT_HEADER, "acme")]), &acme), Ok(()));
        assert_eq!(
            check(
                &headers(&[
                    (TENANT_HEADER, "acme"),
                    (GENERATION_HEADER, "00000000000000a1")
                ]),
                &acme
            ),
            Ok(())
        );
        assert_eq!(
            check(&headers(&[(TENANT_HEADER, "globex")]), &acme),
            Err(Refusal::OtherTenant)
        );
        assert_eq!(
            check(
                &headers(&[
                    (TENANT_HEADER, "acme"),
                    (GENERATION_HEADER, "00000000000000a2")
                ]),
                &acme
            ),
            Err(Refusal::OtherGeneration)
        );
        assert_eq!(check(&headers(&[]), &acme), Err(Refusal::NoTenant));
        assert_eq!(
            check(&headers(&[(TENANT_HEADER, "")]), &acme),
            Err(Refusal::NoTenant)
        );
        // Tenant names are compared exactly: no case folding, no prefix match.
        assert_eq!(
            check(&headers(&[(TENANT_HEADER, "ACME")]), &acme),
            Err(Refusal::OtherTenant)
        );
        assert_eq!(
            check(&headers(&[(TENANT_HEADER, "acm")]), &acme),
            Err(Refusal::OtherTenant)
        );
        // An unowned container is nobody's.
        assert_eq!(
            check(&headers(&[(TENANT_HEADER, "acme")]), &live(None)),
            Err(Refusal::OtherTenant)
        );
    }
}
