//! The one place that maps the proxy's refusals to HTTP statuses, so the status policy
//! (401 for every authentication failure, 404 rather than 403, 421 for SNI mismatches, 429
//! with `Retry-After`) is written and tested once.

use crate::host::HostError;
use crate::identity::IdentityError;
use crate::limit::RetryAfter;

/// Any reason the proxy refuses a request before routing it upstream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Authentication failed.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// Host/SNI did not route.
    #[error(transparent)]
    Host(#[from] HostError),
    /// Over a rate limit.
    #[error(transparent)]
    Limited(#[from] RetryAfter),
}

/// The HTTP status of a refusal, and the `Retry-After` seconds when there is one.
pub fn status(r: &Refusal) -> (u16, Option<u64>) {
    match r {
        // Every authentication failure looks the same to the client.
        Refusal::Identity(_) => (401, None),
        Refusal::Host(HostError::Missing | HostError::Malformed(_)) => (400, None),
        Refusal::Host(HostError::Misdirected { .. }) => (421, None),
        Refusal::Host(HostError::Unknown(_)) => (404, None),
        Refusal::Limited(r) => (429, Some(r.header_seconds())),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn statuses() {
        let cases: Vec<(Refusal, (u16, Option<u64>))> = vec![
            (IdentityError::NoCredentials.into(), (401, None)),
            (IdentityError::Expired.into(), (401, None)),
            (IdentityError::UnknownToken.into(), (401, None)),
            (HostError::Missing.into(), (400, None)),
            (HostError::Malformed("x y".into()).into(), (400, None)),
            (
                HostError::Misdirected {
                    sni: "a".into(),
                    host: "b".into(),
                }
                .into(),
                (421, None),
            ),
            (HostError::Unknown("x".into()).into(), (404, None)),
            (
                RetryAfter(Duration::from_millis(1500)).into(),
                (429, Some(2)),
            ),
            (RetryAfter(Duration::ZERO).into(), (429, Some(1))),
        ];
        for (r, want) in cases {
            assert_eq!(status(&r), want, "{r:?}");
        }
    }
}
