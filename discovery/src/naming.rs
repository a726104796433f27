//! Instance ids: every id must be a DNS label, because the proxy routes
//! `https://<id>.<suffix>:9163/metrics` by the first label of the Host.

use sha2::{Digest, Sha256};

/// True for a valid lowercase DNS label: 1–63 characters of `a-z0-9-`, not starting or
/// ending with `-`.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// The routable id for a container.
///
/// `preferred` (an orchestrator UUID label) wins when it is, lowercased, a DNS label; then the
/// runtime id when it already is one; otherwise a stable derived id: a readable prefix of the
/// runtime id (lowercased, other characters folded to `-`, at most 40 characters) plus `-`
/// and 12 hex digits of its SHA-256, so two distinct runtime ids never share a derived id
/// in practice and the same runtime id always gets the same one.
pub fn instance_id_for(preferred: Option<&str>, runtime_id: &str) -> String {
    if let Some(p) = preferred.map(str::to_ascii_lowercase) {
        if is_dns_label(&p) {
            return p;
        }
    }
    if is_dns_label(runtime_id) {
        return runtime_id.to_string();
    }
    let mut prefix = String::with_capacity(40);
    for c in runtime_id.chars() {
        if prefix.len() == 40 {
            break;
        }
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            prefix.push(c);
        } else if !prefix.is_empty() && !prefix.ends_with('-') {
            prefix.push('-');
        }
    }
    let digest = Sha256::digest(runtime_id.as_bytes());
    let hash: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
    let prefix = prefix.trim_end_matches('-');
    if prefix.is_empty() {
        format!("i-{hash}")
    } else {
        format!("{prefix}-{hash}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_validated() {
        assert!(is_dns_label("web-1"));
        assert!(is_dns_label(&"a".repeat(63)));
        assert!(!is_dns_label(&"a".repeat(64)));
        assert!(!is_dns_label("Web"));
        assert!(!is_dns_label("-a"));
        assert!(!is_dns_label("a-"));
        assert!(!is_dns_label("a.b"));
        assert!(!is_dns_label(""));
    }

    #[test]
    fn preferred_uuid_label_wins_lowercased() {
        let id = instance_id_for(Some("AD466FBF-46A2-4027-9B64-8D3CDB7E9072"), "c1");
        assert_eq!(id, "ad466fbf-46a2-4027-9b64-8d3cdb7e9072");
        // An invalid preferred value falls through to the runtime id.
        assert_eq!(instance_id_for(Some("not a label"), "c1"), "c1");
    }

    #[test]
    fn long_docker_ids_get_a_stable_readable_derived_id() {
        let docker = "4b825dc642cb6eb9a060e54bf8d69288fbee4904b825dc642cb6eb9a060e54bf";
        let a = instance_id_for(None, docker);
        assert!(is_dns_label(&a), "{a}");
        assert!(a.starts_with(&docker[..40]));
        assert_eq!(a, instance_id_for(None, docker));
        let mut other = docker.to_string();
        other.replace_range(63..64, "0");
        assert_ne!(a, instance_id_for(None, &other));
    }

    #[test]
    fn odd_runtime_ids_are_folded() {
        let a = instance_id_for(None, "My_Container.1");
        assert!(a.starts_with("my-container-1-"), "{a}");
        assert!(is_dns_label(&a));
        assert!(is_dns_label(&instance_id_for(None, "___")));
        assert_ne!(instance_id_for(None, "a_b"), instance_id_for(None, "a.b"));
    }
}
