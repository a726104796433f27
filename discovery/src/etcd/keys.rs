//! The key layout under the prefix and the codecs of its values (layout documented in
//! [`crate::etcd`]). Decoding checks everything a proxy relies on — the ids in the value
//! match the key, ids are DNS labels, addresses parse, sizes are bounded — and returns an
//! error instead of panicking, since anyone with write access to etcd controls these bytes.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::agents::config::AgentAddr;
use crate::inventory::Node;
use crate::model::Instance;
use crate::naming::is_dns_label;
use crate::sd::is_group_name;

/// The value of `<prefix>proxies/<id>`: one live proxy replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyRecord {
    /// Replica id (unique per running proxy process).
    pub id: String,
    /// When the replica started, seconds since the Unix epoch.
    pub started: u64,
    /// Where the replica listens, if it said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertise: Option<String>,
}

impl ProxyRecord {
    /// A record for a replica starting now.
    pub fn starting_now(id: impl Into<String>, advertise: Option<String>) -> ProxyRecord {
        let started = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        ProxyRecord {
            id: id.into(),
            started,
            advertise,
        }
    }
}

/// What a key under the prefix names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key<'a> {
    /// `nodes/<id>`.
    Node(&'a str),
    /// `instances/<node>/<id>`.
    Instance {
        /// The node segment.
        node: &'a str,
        /// The instance segment.
        id: &'a str,
    },
    /// `proxies/<id>`.
    Proxy(&'a str),
    /// `tenants/<name>`: one tenant record (read by the proxy's tenants, not the inventory).
    Tenant(&'a str),
    /// `tenants-config/<item>`: `defaults` or `revoked` of the tenants (idem).
    TenantsConfig(&'a str),
    /// Anything else under the prefix (ignored: room for later kinds of keys).
    Other,
}

/// The key layout under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// The layout under `prefix` (which ends with `/`; see [`super::EtcdConfig::problems`]).
    pub fn new(prefix: impl Into<String>) -> Keys {
        Keys {
            prefix: prefix.into(),
        }
    }

    /// The prefix itself: every lookout key starts with it.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `<prefix>nodes/<node>`.
    pub fn node(&self, node: &str) -> String {
        format!("{}nodes/{node}", self.prefix)
    }

    /// `<prefix>instances/<node>/`: every instance key of one node.
    pub fn node_instances(&self, node: &str) -> String {
        format!("{}instances/{node}/", self.prefix)
    }

    /// `<prefix>instances/<node>/<id>`.
    pub fn instance(&self, node: &str, id: &str) -> String {
        format!("{}instances/{node}/{id}", self.prefix)
    }

    /// `<prefix>proxies/`: every replica key.
    pub fn proxies(&self) -> String {
        format!("{}proxies/", self.prefix)
    }

    /// `<prefix>proxies/<id>`.
    pub fn proxy(&self, id: &str) -> String {
        format!("{}proxies/{id}", self.prefix)
    }

    /// `<prefix>tenants/`: every tenant record.
    pub fn tenants(&self) -> String {
        format!("{}tenants/", self.prefix)
    }

    /// `<prefix>tenants/<name>`: one tenant's record.
    pub fn tenant(&self, name: &str) -> String {
        format!("{}tenants/{name}", self.prefix)
    }

    /// `<prefix>tenants-config/<item>`: the tenants' `defaults` or `revoked`.
    pub fn tenants_config(&self, item: &str) -> String {
        format!("{}tenants-config/{item}", self.prefix)
    }

    /// The one key range holding every tenants key, `tenants/…` and `tenants-config/…` alike
    /// (`[<prefix>tenants, <prefix>tenantt)`), so that one read and one watch see them at a
    /// single revision. Nothing else lookout writes falls in it.
    pub fn tenants_range(&self) -> (Vec<u8>, Vec<u8>) {
        let start = format!("{}tenants", self.prefix).into_bytes();
        let end = prefix_end(&start);
        (start, end)
    }

    /// What `key` names. Keys outside the prefix, not UTF-8, or with empty or extra
    /// segments are [`Key::Other`].
    pub fn parse<'a>(&self, key: &'a [u8]) -> Key<'a> {
        let Some(rest) = std::str::from_utf8(key)
            .ok()
            .and_then(|k| k.strip_prefix(self.prefix.as_str()))
        else {
            return Key::Other;
        };
        let one = |s: &'a str| (!s.is_empty() && !s.contains('/')).then_some(s);
        let (kind, tail) = rest.split_once('/').unwrap_or((rest, ""));
        match kind {
            "nodes" => one(tail).map_or(Key::Other, Key::Node),
            "proxies" => one(tail).map_or(Key::Other, Key::Proxy),
            "tenants" => one(tail).map_or(Key::Other, Key::Tenant),
            "tenants-config" => one(tail).map_or(Key::Other, Key::TenantsConfig),
            "instances" => match tail.split_once('/') {
                Some((node, id)) => match (one(node), one(id)) {
                    (Some(node), Some(id)) => Key::Instance { node, id },
                    _ => Key::Other,
                },
                None => Key::Other,
            },
            _ => Key::Other,
        }
    }
}

/// The first key after every key starting with `prefix` (etcd's range end for a prefix).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff (or empty): to the end of the keyspace.
    vec![0]
}

/// Why a value was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    /// Larger than `max_value_bytes`.
    #[error("value of {0} bytes is over the limit")]
    TooLarge(usize),
    /// Not the JSON of the record.
    #[error("not a valid record: {0}")]
    Json(String),
    /// The record contradicts its key or breaks a rule proxies rely on.
    #[error("{0}")]
    Invalid(String),
}

fn json<'a, T: Deserialize<'a>>(value: &'a [u8], max: usize) -> Result<T, Malformed> {
    if value.len() > max {
        return Err(Malformed::TooLarge(value.len()));
    }
    serde_json::from_slice(value).map_err(|e| Malformed::Json(e.to_string()))
}

fn invalid(why: String) -> Malformed {
    Malformed::Invalid(why)
}

/// Decodes the value of `nodes/<id>`.
pub fn decode_node(id: &str, value: &[u8], max: usize) -> Result<Node, Malformed> {
    let node: Node = json(value, max)?;
    if node.id != id {
        return Err(invalid(format!("id {:?} differs from the key", node.id)));
    }
    if !is_dns_label(&node.id) {
        return Err(invalid(format!("node id {:?} is not a DNS label", node.id)));
    }
    if let Err(e) = node.agent.parse::<AgentAddr>() {
        return Err(invalid(e));
    }
    Ok(node)
}

/// Decodes the value of `instances/<node>/<id>`.
pub fn decode_instance(
    node: &str,
    id: &str,
    value: &[u8],
    max: usize,
) -> Result<Instance, Malformed> {
    let i: Instance = json(value, max)?;
    if i.id != id || i.node != node {
        return Err(invalid(format!(
            "instance {:?} on node {:?} differs from the key",
            i.id, i.node
        )));
    }
    if !is_dns_label(&i.id) || !is_dns_label(&i.node) {
        return Err(invalid(format!(
            "instance {:?} or node {:?} is not a DNS label",
            i.id, i.node
        )));
    }
    if i.tenant.as_deref() == Some("") {
        return Err(invalid("empty tenant".to_string()));
    }
    if let Some(g) = i.groups.iter().find(|g| !is_group_name(g)) {
        return Err(invalid(format!("bad group {g:?}")));
    }
    Ok(i)
}

/// Decodes the value of `proxies/<id>`.
pub fn decode_proxy(id: &str, value: &[u8], max: usize) -> Result<ProxyRecord, Malformed> {
    let p: ProxyRecord = json(value, max)?;
    if p.id != id {
        return Err(invalid(format!("id {:?} differs from the key", p.id)));
    }
    Ok(p)
}

/// The JSON written for a record. Serialising these plain structs cannot fail; an empty
/// value (which every decoder refuses) stands in should it ever.
pub fn encode<T: Serialize>(record: &T) -> Vec<u8> {
    serde_json::to_vec(record).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(id: &str, node: &str) -> Instance {
        Instance {
            id: id.into(),
            runtime_id: id.into(),
            generation: String::new(),
            node: node.into(),
            tenant: Some("acme".into()),
            alias: id.into(),
            groups: vec!["web".into()],
            image: None,
            source: "runc".into(),
            labels: Default::default(),
        }
    }

    #[test]
    fn keys_round_trip() {
        let k = Keys::new("/lookout/");
        assert_eq!(k.node("n1"), "/lookout/nodes/n1");
        assert_eq!(k.instance("n1", "web-1"), "/lookout/instances/n1/web-1");
        assert!(k.instance("n1", "a").starts_with(&k.node_instances("n1")));
        assert_eq!(k.parse(k.node("n1").as_bytes()), Key::Node("n1"));
        assert_eq!(
            k.parse(k.instance("n1", "a").as_bytes()),
            Key::Instance {
                node: "n1",
                id: "a"
            }
        );
        assert_eq!(k.parse(k.proxy("p-1").as_bytes()), Key::Proxy("p-1"));
        assert_eq!(k.parse(b"/lookout/tenants/acme"), Key::Tenant("acme"));
        assert_eq!(k.parse(k.tenant("acme").as_bytes()), Key::Tenant("acme"));
        assert_eq!(
            k.parse(k.tenants_config("revoked").as_bytes()),
            Key::TenantsConfig("revoked")
        );
        let (start, end) = k.tenants_range();
        for inside in [k.tenant("a"), k.tenants_config("defaults")] {
            assert!(start.as_slice() <= inside.as_bytes() && inside.as_bytes() < end.as_slice());
        }
        for outside in [k.node("n1"), k.proxy("p"), k.instance("n", "i")] {
            let o = outside.as_bytes();
            assert!(o < start.as_slice() || o >= end.as_slice(), "{outside}");
        }
        for other in [
            &b"/other/nodes/n1"[..],
            b"/lookout/nodes/",
            b"/lookout/nodes/a/b",
            b"/lookout/instances/n1",
            b"/lookout/instances/n1/",
            b"/lookout/instances//a",
            b"/lookout/instances/n1/a/b",
            b"/lookout/whatever/x",
            b"/lookout/nodes/\xff",
        ] {
            assert_eq!(
                k.parse(other),
                Key::Other,
                "{:?}",
                String::from_utf8_lossy(other)
            );
        }
        assert_eq!(prefix_end(b"/lookout/"), b"/lookout0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), b"\0");
    }

    #[test]
    fn values_are_checked_against_their_keys() {
        let max = 64 * 1024;
        let good = encode(&inst("a", "n1"));
        assert_eq!(decode_instance("n1", "a", &good, max), Ok(inst("a", "n1")));
        assert!(matches!(
            decode_instance("n2", "a", &good, max),
            Err(Malformed::Invalid(_))
        ));
        assert!(matches!(
            decode_instance("n1", "a", &good, 10),
            Err(Malformed::TooLarge(_))
        ));
        assert!(matches!(
            decode_instance("n1", "a", b"{not json", max),
            Err(Malformed::Json(_))
        ));
        let mut bad = inst("Bad_Id", "n1");
        assert!(decode_instance("n1", "Bad_Id", &encode(&bad), max).is_err());
        bad = inst("a", "n1");
        bad.groups = vec!["no spaces".into()];
        assert!(decode_instance("n1", "a", &encode(&bad), max).is_err());

        let node = Node {
            id: "n1".into(),
            agent: "10.0.0.1:9164".into(),
            hostname: "n1.dc".into(),
        };
        assert_eq!(decode_node("n1", &encode(&node), max), Ok(node.clone()));
        assert!(decode_node("n2", &encode(&node), max).is_err());
        let no_port = Node {
            agent: "10.0.0.1".into(),
            ..node
        };
        assert!(decode_node("n1", &encode(&no_port), max).is_err());

        let p = ProxyRecord::starting_now("p1", None);
        assert_eq!(decode_proxy("p1", &encode(&p), max), Ok(p.clone()));
        assert!(decode_proxy("p2", &encode(&p), max).is_err());
        assert!(decode_proxy("p1", b"", max).is_err());
    }
}
