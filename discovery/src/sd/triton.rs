//! Triton SD bodies (`triton_sd_configs`, roles `container` and `cn`).
//!
//! Prometheus decodes them with Go's `encoding/json`: every value must be a string (`groups`
//! an array of strings), extra keys are ignored, a missing field becomes `""` and a label
//! whose value is `""` is dropped. Prometheus itself forms each address as
//! `<vm_uuid>.<dns_suffix>:<port>` (`<server_uuid>…` for nodes), so ids must be DNS labels —
//! which the inventory guarantees.

use serde::Serialize;

use super::{selected, to_json};
use crate::inventory::Inventory;

/// `Content-Type` of a successful Triton discovery reply. Prometheus does not check it;
/// it is correct for clients that do.
pub const TRITON_CONTENT_TYPE: &str = "application/json";

#[derive(Serialize)]
struct Containers<'a> {
    containers: Vec<Container<'a>>,
}

#[derive(Serialize)]
struct Container<'a> {
    vm_uuid: &'a str,
    vm_alias: &'a str,
    vm_brand: &'a str,
    vm_image_uuid: &'a str,
    server_uuid: &'a str,
    groups: &'a [String],
}

#[derive(Serialize)]
struct ComputeNodes<'a> {
    cns: Vec<ComputeNode<'a>>,
}

#[derive(Serialize)]
struct ComputeNode<'a> {
    server_uuid: &'a str,
    server_hostname: &'a str,
}

/// The `GET /v1/discover` body: `{"containers":[…]}` with one entry per instance `tenant`
/// owns, in id order, narrowed to those carrying any of `groups` when a filter is given.
///
/// Per entry: `vm_uuid` = instance id, `vm_alias` = alias, `vm_brand` = how the agent found
/// it (`runc`, `crun`, `cgroup-rule:<name>`), `vm_image_uuid` = image (`""`, hence no
/// label, when unknown), `server_uuid` = node id, `groups` = the instance's groups.
/// A tenant with nothing to show gets `{"containers":[]}`, which Prometheus takes as an
/// authoritative empty list — so send it only with 200, and only when it is true.
pub fn triton_containers(inv: &Inventory, tenant: &str, groups: Option<&[String]>) -> Vec<u8> {
    let containers = inv
        .owned_by(tenant)
        .filter(|i| selected(&i.groups, groups))
        .map(|i| Container {
            vm_uuid: &i.id,
            vm_alias: &i.alias,
            vm_brand: &i.source,
            vm_image_uuid: i.image.as_deref().unwrap_or(""),
            server_uuid: &i.node,
            groups: &i.groups,
        })
        .collect();
    to_json(&Containers { containers })
}

/// The `GET /v1/gz/discover` body (operators only): `{"cns":[…]}` with every node, in id
/// order; `server_hostname` becomes `__meta_triton_machine_alias`. The query string is
/// ignored on this route, as in cmon.
pub fn triton_nodes(inv: &Inventory) -> Vec<u8> {
    let cns = inv
        .nodes()
        .map(|n| ComputeNode {
            server_uuid: &n.id,
            server_hostname: &n.hostname,
        })
        .collect();
    to_json(&ComputeNodes { cns })
}
