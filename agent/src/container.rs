//! A container as the agent tracks it, and how runtime facts (labels, ids) become a routable,
//! owned [`Instance`].
//!
//! Ownership comes only from labels the operator's orchestrator sets (OCI annotations,
//! Kubernetes namespaces), or from operator-written cgroup rules — never from anything a
//! tenant controls inside the container (its hostname, files, environment).

use std::collections::BTreeSet;
use std::path::PathBuf;

use lookout_discovery::{instance_id_for, Instance};

use crate::cgroup::CgroupPaths;
use crate::config::LabelKeys;
use crate::source::Discovered;

/// Kubernetes pod namespace annotations (containerd CRI, CRI-O).
const K8S_NAMESPACE: &[&str] = &[
    "io.kubernetes.cri.sandbox-namespace",
    "io.kubernetes.pod.namespace",
];
/// Kubernetes pod name annotations.
const K8S_POD: &[&str] = &["io.kubernetes.cri.sandbox-name", "io.kubernetes.pod.name"];
/// Kubernetes container name annotations.
const K8S_CONTAINER: &[&str] = &[
    "io.kubernetes.cri.container-name",
    "io.kubernetes.container.name",
];
/// Container type annotations; `sandbox` marks the pause container, which is no workload.
const K8S_TYPE: &[&str] = &[
    "io.kubernetes.cri.container-type",
    "io.kubernetes.cri-o.ContainerType",
];
/// Image annotation written by containerd's CRI.
const K8S_IMAGE: &[&str] = &["io.kubernetes.cri.image-name"];

/// One live container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    /// What discovery publishes.
    pub instance: Instance,
    /// Init pid (host namespace).
    pub pid: u32,
    /// Init start, clock ticks since boot.
    pub start_ticks: u64,
    /// Its cgroups.
    pub cgroups: CgroupPaths,
    /// Root filesystem on the host, if known.
    pub rootfs: Option<PathBuf>,
}

/// Builds the container from what a source found, or `None` for a Kubernetes sandbox (pause)
/// container. The id is not checked for uniqueness here; the registry does that.
pub fn from_discovered(d: Discovered, keys: &LabelKeys, node: &str) -> Option<Container> {
    let label = |k: &str| {
        d.labels
            .get(k)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    };
    let first = |ks: &[&str]| ks.iter().find_map(|k| label(k));
    if first(K8S_TYPE) == Some("sandbox") {
        return None;
    }
    let tenant = label(&keys.tenant)
        .or_else(|| {
            keys.tenant_from_kubernetes_namespace
                .then(|| first(K8S_NAMESPACE))
                .flatten()
        })
        .or(keys.default_tenant.as_deref().filter(|t| !t.is_empty()))
        .map(str::to_string);
    let alias = label(&keys.alias)
        .map(str::to_string)
        .or_else(|| match (first(K8S_POD), first(K8S_CONTAINER)) {
            (Some(p), Some(c)) => Some(format!("{p}/{c}")),
            _ => None,
        })
        .or_else(|| d.hostname.clone())
        .unwrap_or_else(|| d.runtime_id.clone());
    let groups: BTreeSet<String> = label(&keys.groups)
        .map(|g| {
            g.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let image = label(&keys.image)
        .or_else(|| first(K8S_IMAGE))
        .map(str::to_string);
    let id = instance_id_for(label(&keys.id), &d.runtime_id);
    Some(Container {
        instance: Instance {
            id,
            generation: generation(&d.runtime_id, d.start_ticks),
            runtime_id: d.runtime_id,
            node: node.to_string(),
            tenant,
            alias,
            groups: groups.into_iter().collect(),
            image,
            source: d.source,
            labels: d.labels,
        },
        pid: d.pid,
        start_ticks: d.start_ticks,
        cgroups: d.cgroups,
        rootfs: d.rootfs,
    })
}

/// The [`Instance::generation`] of a container: a hash of its runtime id and its init's
/// start time, so a new container under a reused id (or name) gets a new one. Not a secret
/// and not an authenticator — the agent only compares it with what it itself published.
/// FNV-1a, 64 bits, in hex: stable across agent restarts and versions.
pub fn generation(runtime_id: &str, start_ticks: u64) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in runtime_id
        .bytes()
        .chain([0])
        .chain(start_ticks.to_le_bytes())
    {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn found(labels: &[(&str, &str)]) -> Discovered {
        Discovered {
            runtime_id: "4b825dc642cb6eb9a060e54bf8d69288fbee4904b825dc642cb6eb9a060e54bf".into(),
            pid: 1,
            start_ticks: 1,
            cgroups: CgroupPaths::default(),
            rootfs: None,
            hostname: Some("host-in-container".into()),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            source: "runc".into(),
        }
    }

    #[test]
    fn a_new_incarnation_of_an_id_has_a_new_generation() {
        let keys = LabelKeys::default();
        let first = from_discovered(found(&[]), &keys, "n").expect("workload");
        let again = from_discovered(found(&[]), &keys, "n").expect("workload");
        assert_eq!(first.instance.generation, again.instance.generation);
        assert_eq!(first.instance.generation.len(), 16);
        let mut later = found(&[]);
        later.start_ticks += 1;
        let later = from_discovered(later, &keys, "n").expect("workload");
        assert_eq!(first.instance.id, later.instance.id);
        assert_ne!(first.instance.generation, later.instance.generation);
        assert_ne!(generation("a", 1), generation("b", 1));
    }

    #[test]
    fn operator_labels_set_ownership_and_names() {
        let c = from_discovered(
            found(&[
                ("lookout.tenant", "acme"),
                ("lookout.alias", "web-1"),
                ("lookout.groups", "web, db,,web"),
                ("lookout.id", "AD466FBF-46A2-4027-9B64-8D3CDB7E9072"),
            ]),
            &LabelKeys::default(),
            "node-a",
        )
        .expect("workload");
        assert_eq!(c.instance.tenant.as_deref(), Some("acme"));
        assert_eq!(c.instance.alias, "web-1");
        assert_eq!(c.instance.groups, ["db", "web"]);
        assert_eq!(c.instance.id, "ad466fbf-46a2-4027-9b64-8d3cdb7e9072");
        assert_eq!(c.instance.node, "node-a");
    }

    #[test]
    fn kubernetes_namespace_is_the_tenant_and_sandboxes_are_skipped() {
        let keys = LabelKeys::default();
        let c = from_discovered(
            found(&[
                ("io.kubernetes.cri.container-type", "container"),
                ("io.kubernetes.cri.sandbox-namespace", "team-a"),
                ("io.kubernetes.cri.sandbox-name", "api-7d9"),
                ("io.kubernetes.cri.container-name", "app"),
            ]),
            &keys,
            "n",
        )
        .expect("workload");
        assert_eq!(c.instance.tenant.as_deref(), Some("team-a"));
        assert_eq!(c.instance.alias, "api-7d9/app");
        assert!(from_discovered(
            found(&[("io.kubernetes.cri.container-type", "sandbox")]),
            &keys,
            "n"
        )
        .is_none());
        let no_ns = LabelKeys {
            tenant_from_kubernetes_namespace: false,
            ..LabelKeys::default()
        };
        let c = from_discovered(found(&[("io.kubernetes.pod.namespace", "x")]), &no_ns, "n")
            .expect("workload");
        assert_eq!(c.instance.tenant, None);
    }

    #[test]
    fn unlabelled_containers_are_unowned_with_a_routable_id() {
        let c = from_discovered(found(&[]), &LabelKeys::default(), "n").expect("workload");
        assert_eq!(
            c.instance.tenant, None,
            "hostname must never grant ownership"
        );
        assert_eq!(c.instance.alias, "host-in-container");
        assert!(lookout_discovery::is_dns_label(&c.instance.id));
    }

    #[test]
    fn default_tenant_owns_only_the_unlabelled() {
        let keys = LabelKeys {
            default_tenant: Some("dev".into()),
            ..LabelKeys::default()
        };
        let c = from_discovered(found(&[]), &keys, "n").expect("workload");
        assert_eq!(c.instance.tenant.as_deref(), Some("dev"));
        let c =
            from_discovered(found(&[("lookout.tenant", "acme")]), &keys, "n").expect("workload");
        assert_eq!(c.instance.tenant.as_deref(), Some("acme"));
        let c = from_discovered(found(&[("io.kubernetes.pod.namespace", "ns")]), &keys, "n")
            .expect("workload");
        assert_eq!(c.instance.tenant.as_deref(), Some("ns"));
    }
}
