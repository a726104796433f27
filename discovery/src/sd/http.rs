//! HTTP SD bodies (`http_sd_configs`, Prometheus ≥ 2.28).
//!
//! Prometheus refuses the whole refresh unless: the status is 200, the content type is
//! [`HTTP_SD_CONTENT_TYPE`], the body is a JSON array of groups with only `targets` and
//! `labels` keys, and every label name matches `[a-zA-Z_][a-zA-Z0-9_]*`. Labels belong to a
//! group, so each instance gets a group of its own. Unlike Triton SD, the server forms the
//! addresses, so it must know the public DNS suffix and port.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{groups_label, selected, to_json};
use crate::inventory::Inventory;

/// The only `Content-Type` to send with an HTTP SD body (Prometheus also accepts
/// `; charset=utf-8`, nothing else). The body must not be compressed: Prometheus's HTTP SD
/// client sends no `Accept-Encoding` and does not decode gzip.
pub const HTTP_SD_CONTENT_TYPE: &str = "application/json";

/// Machine (instance or node) id; from triton SD's `vm_uuid` / `server_uuid`.
const MACHINE_ID: &str = "__meta_triton_machine_id";
/// Alias or node hostname.
const MACHINE_ALIAS: &str = "__meta_triton_machine_alias";
/// How the agent found the instance.
const MACHINE_BRAND: &str = "__meta_triton_machine_brand";
/// Image name or id.
const MACHINE_IMAGE: &str = "__meta_triton_machine_image";
/// The node hosting the instance.
const SERVER_ID: &str = "__meta_triton_server_id";
/// `,a,b,` when the instance has groups.
const GROUPS: &str = "__meta_triton_groups";

#[derive(Serialize)]
struct Group {
    targets: [String; 1],
    labels: BTreeMap<&'static str, String>,
}

/// The HTTP SD body for `tenant`: a JSON array with one group per instance it owns (in id
/// order, narrowed by the OR filter `groups` when given), each
/// `{"targets":["<id>.<dns_suffix>:<port>"],"labels":{…}}`.
///
/// The labels are the ones Prometheus's triton SD would produce for the same instance —
/// `__meta_triton_machine_id`, `_alias`, `_brand`, `_image`, `__meta_triton_server_id` and,
/// when the instance has groups, `__meta_triton_groups` = `,a,b,` — so relabel rules carry
/// over. A label whose value would be empty is left out, as triton SD drops it too.
/// An empty result is `[]`, which must be sent with 200: Prometheus then drops the targets.
pub fn http_sd(
    inv: &Inventory,
    tenant: &str,
    groups: Option<&[String]>,
    dns_suffix: &str,
    port: u16,
) -> Vec<u8> {
    let body: Vec<Group> = inv
        .owned_by(tenant)
        .filter(|i| selected(&i.groups, groups))
        .map(|i| {
            let group_list = groups_label(&i.groups).unwrap_or_default();
            let labels = [
                (MACHINE_ID, i.id.as_str()),
                (MACHINE_ALIAS, i.alias.as_str()),
                (MACHINE_BRAND, i.source.as_str()),
                (MACHINE_IMAGE, i.image.as_deref().unwrap_or("")),
                (SERVER_ID, i.node.as_str()),
                (GROUPS, group_list.as_str()),
            ];
            group(&i.id, dns_suffix, port, labels)
        })
        .collect();
    to_json(&body)
}

/// The HTTP SD body for operators: one group per node, target
/// `<node id>.<dns_suffix>:<port>`, labels `__meta_triton_machine_id` = node id and
/// `__meta_triton_machine_alias` = hostname (when known), as triton SD's role `cn` gives.
pub fn http_sd_nodes(inv: &Inventory, dns_suffix: &str, port: u16) -> Vec<u8> {
    let body: Vec<Group> = inv
        .nodes()
        .map(|n| {
            group(
                &n.id,
                dns_suffix,
                port,
                [
                    (MACHINE_ID, n.id.as_str()),
                    (MACHINE_ALIAS, n.hostname.as_str()),
                ],
            )
        })
        .collect();
    to_json(&body)
}

/// One target group; labels with empty values are left out.
fn group<const N: usize>(
    id: &str,
    dns_suffix: &str,
    port: u16,
    labels: [(&'static str, &str); N],
) -> Group {
    Group {
        targets: [format!("{id}.{dns_suffix}:{port}")],
        labels: labels
            .into_iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| (k, v.to_string()))
            .collect(),
    }
}
