//! Discovery bodies, rendered once per change of what they show and reused by every request
//! until then.
//!
//! Prometheus asks for the same body at every refresh, from every replica, and a tenant's
//! instances change far less often than that. A body is cached under the stamp of the
//! inventory part it was rendered from ([`TenantInstances::stamp`] for a tenant's routes,
//! [`NodeSet::stamp`] for the operators' node routes), so a change to one tenant re-renders
//! that tenant's bodies only. The gzip form (Triton routes only) is made on first demand and
//! kept beside the plain one.
//!
//! Bounds: at most [`MAX_BYTES`] of bodies are kept; past that the cache is emptied and
//! refills on demand. Tenants that own nothing get a tiny body rendered per request and
//! never cached. Not here: authorization (the handler decides whose bodies a caller gets).
//!
//! [`TenantInstances::stamp`]: lookout_discovery::inventory::TenantInstances::stamp
//! [`NodeSet::stamp`]: lookout_discovery::inventory::NodeSet::stamp

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use flate2::write::GzEncoder;

/// Most bytes of bodies (plain and gzip) the cache keeps before it starts over: every
/// tenant's bodies of both kinds at 100,000 instances take about half of it.
pub(crate) const MAX_BYTES: usize = 128 << 20;

/// Which discovery body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    /// Triton SD, role `container` (`/v1/discover`).
    Triton,
    /// HTTP SD of a tenant's instances (`/v1/sd`).
    HttpSd,
    /// Triton SD, role `cn` (`/v1/gz/discover`).
    TritonNodes,
    /// HTTP SD of the nodes (`/v1/gz/sd`).
    HttpSdNodes,
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct Key {
    kind: Kind,
    /// Empty for the node routes (their body is the same for every operator).
    tenant: String,
    groups: Option<Vec<String>>,
}

/// One rendered body and, once asked for, its gzip form.
#[derive(Debug)]
pub(crate) struct Rendered {
    stamp: u64,
    plain: Bytes,
    gzip: OnceLock<Bytes>,
}

impl Rendered {
    fn new(stamp: u64, plain: Vec<u8>) -> Rendered {
        Rendered {
            stamp,
            plain: Bytes::from(plain),
            gzip: OnceLock::new(),
        }
    }

    /// The body as rendered.
    pub(crate) fn plain(&self) -> Bytes {
        self.plain.clone()
    }

    /// The body gzipped; compressed by the first caller, shared after.
    pub(crate) fn gzip(&self) -> Bytes {
        self.gzip.get_or_init(|| gzip(&self.plain)).clone()
    }

    fn size(&self) -> usize {
        self.plain.len() + self.gzip.get().map_or(0, Bytes::len)
    }
}

/// gzip at level 2. It is redone after every change of the tenant, so the level stays low;
/// but zlib-rs's level 1 is its "quick" strategy, which on a 10,000-container body (1.85 MB)
/// gave 410 KB in 4.6 ms against 281 KB in 5.7 ms at level 2 (and 255 KB in 17 ms at 6).
fn gzip(plain: &[u8]) -> Bytes {
    let mut enc = GzEncoder::new(
        Vec::with_capacity(plain.len() / 4),
        flate2::Compression::new(2),
    );
    // Writing into a Vec cannot fail.
    let _ = enc.write_all(plain);
    Bytes::from(enc.finish().unwrap_or_default())
}

/// The cache the handler shares between requests.
#[derive(Debug)]
pub(crate) struct Bodies {
    entries: Mutex<HashMap<Key, Arc<Rendered>>>,
    max_bytes: usize,
}

impl Default for Bodies {
    fn default() -> Bodies {
        Bodies::new(MAX_BYTES)
    }
}

impl Bodies {
    /// A cache keeping at most `max_bytes` of bodies.
    pub(crate) fn new(max_bytes: usize) -> Bodies {
        Bodies {
            entries: Mutex::new(HashMap::new()),
            max_bytes,
        }
    }

    /// The body of `kind` for `tenant` (ignored by the node routes) and `groups`, rendered
    /// from inventory content stamped `stamp`: the cached one if it was rendered from the
    /// same stamp, else `render()`'s, which is kept. `stamp = None` (nothing to cache:
    /// the tenant owns nothing) renders without caching.
    ///
    /// The render runs outside the lock: two requests racing on a fresh stamp may both
    /// render, and the later one is kept.
    pub(crate) fn get(
        &self,
        kind: Kind,
        tenant: &str,
        groups: Option<&[String]>,
        stamp: Option<u64>,
        render: impl FnOnce() -> Vec<u8>,
    ) -> Arc<Rendered> {
        let Some(stamp) = stamp else {
            return Arc::new(Rendered::new(0, render()));
        };
        let key = Key {
            kind,
            tenant: match kind {
                Kind::Triton | Kind::HttpSd => tenant.to_string(),
                Kind::TritonNodes | Kind::HttpSdNodes => String::new(),
            },
            groups: groups.map(<[String]>::to_vec),
        };
        if let Some(b) = self.lock().get(&key).filter(|b| b.stamp == stamp) {
            return Arc::clone(b);
        }
        let body = Arc::new(Rendered::new(stamp, render()));
        let mut entries = self.lock();
        // Gzip forms grow entries after insertion, so the total is summed here rather
        // than tracked; this runs once per render, which costs far more.
        let held: usize = entries.values().map(|b| b.size()).sum();
        if held + body.size() > self.max_bytes {
            entries.clear();
        }
        entries.insert(key, Arc::clone(&body));
        body
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Arc<Rendered>>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// True when an `Accept-Encoding` value admits gzip: `gzip` (or, failing an explicit
/// `gzip`, `*`) with a non-zero quality.
pub(crate) fn accepts_gzip(value: Option<&str>) -> bool {
    let mut star = None;
    for item in value.unwrap_or("").split(',') {
        let mut parts = item.split(';').map(str::trim);
        let coding = parts.next().unwrap_or("");
        let q = parts
            .find_map(|p| p.strip_prefix("q=").or_else(|| p.strip_prefix("Q=")))
            .map_or(Some(1.0), |q| q.trim().parse::<f32>().ok());
        let accepted = q.is_some_and(|q| q > 0.0);
        if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
            return accepted;
        }
        if coding == "*" {
            star = Some(accepted);
        }
    }
    star.unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn gzip_negotiation() {
        assert!(accepts_gzip(Some("gzip")));
        assert!(accepts_gzip(Some("GZIP")));
        assert!(accepts_gzip(Some("deflate, gzip;q=0.5")));
        assert!(accepts_gzip(Some("*")));
        assert!(!accepts_gzip(Some("gzip;q=0")));
        assert!(!accepts_gzip(Some("gzip;q=0, *")), "explicit refusal wins");
        assert!(!accepts_gzip(Some("gzip;q=zz")));
        assert!(!accepts_gzip(None));
        assert!(!accepts_gzip(Some("")));
        assert!(!accepts_gzip(Some("identity")));
        assert!(!accepts_gzip(Some("br, deflate")));
    }

    #[test]
    fn bodies_are_reused_until_their_stamp_moves() {
        let bodies = Bodies::default();
        let renders = std::cell::Cell::new(0);
        let render = |text: &str| {
            renders.set(renders.get() + 1);
            text.as_bytes().to_vec()
        };
        let get = |tenant: &str, groups: Option<&[String]>, stamp, text: &str| {
            bodies
                .get(Kind::Triton, tenant, groups, stamp, || render(text))
                .plain()
        };
        assert_eq!(get("acme", None, Some(1), "a1"), "a1");
        assert_eq!(get("acme", None, Some(1), "unused"), "a1");
        assert_eq!(renders.get(), 1);
        // Another tenant, another filter, another stamp: each renders.
        assert_eq!(get("globex", None, Some(1), "g1"), "g1");
        let web = ["web".to_string()];
        assert_eq!(get("acme", Some(&web), Some(1), "a1-web"), "a1-web");
        assert_eq!(get("acme", None, Some(2), "a2"), "a2");
        assert_eq!(renders.get(), 4);
        assert_eq!(get("acme", Some(&web), Some(1), "unused"), "a1-web");
        // Nothing to cache: rendered every time.
        assert_eq!(get("nobody", None, None, "n"), "n");
        assert_eq!(get("nobody", None, None, "n"), "n");
        assert_eq!(renders.get(), 6);
        // The other kind of body for the same tenant and stamp is its own entry.
        let http = bodies.get(Kind::HttpSd, "acme", None, Some(2), || b"h".to_vec());
        assert_eq!(http.plain(), "h");
    }

    #[test]
    fn node_bodies_are_shared_by_every_operator() {
        let bodies = Bodies::default();
        let first = bodies.get(Kind::TritonNodes, "ops", None, Some(7), || b"cns".to_vec());
        let second = bodies.get(Kind::TritonNodes, "other-ops", None, Some(7), || {
            panic!("rendered again")
        });
        assert!(Arc::ptr_eq(&first, &second));
    }

    #[test]
    fn gzip_is_made_once_and_decodes_to_the_body() {
        let plain = br#"{"containers":[]}"#.repeat(100);
        let bodies = Bodies::default();
        let b = bodies.get(Kind::Triton, "acme", None, Some(1), || plain.clone());
        let gz = b.gzip();
        assert!(gz.len() < plain.len() / 4, "{} bytes", gz.len());
        assert_eq!(b.gzip().as_ptr(), gz.as_ptr(), "compressed once");
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut out)
            .expect("gunzip");
        assert_eq!(out, plain);
    }

    #[test]
    fn the_cache_starts_over_past_its_bound() {
        let bodies = Bodies::new(1000);
        let big = 501;
        bodies.get(Kind::Triton, "a", None, Some(1), || vec![b' '; big]);
        bodies.get(Kind::Triton, "b", None, Some(1), || vec![b' '; big]);
        assert_eq!(bodies.lock().len(), 1, "emptied before b went in");
        assert!(bodies.lock().keys().all(|k| k.tenant == "b"));
    }
}
