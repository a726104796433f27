//! The keys a `lookout tenants` command names, resolved to what a record stores: an SPKI
//! SHA-256 in hex, or an SSH `authorized_keys` line — each with the SPKI hash that identifies
//! it, so that duplicates and removals compare keys, not spellings.

use std::path::PathBuf;

use sha2::{Digest, Sha256};

use super::{normalized, AdminError};
use crate::tenants::{hex, parse_sha256, ssh_key_spki, Sha256Hash, TenantRecord};

/// Keys as given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyInput {
    /// An SPKI SHA-256 (hex, `aa:bb:…` or base64).
    Spki(String),
    /// A PEM certificate, PEM public key or SSH public key file: its key's SPKI SHA-256.
    CertFile(PathBuf),
    /// One `authorized_keys` line.
    SshKey(String),
    /// A file of `authorized_keys` lines (`#` comments and blank lines skipped).
    SshKeyFile(PathBuf),
}

/// How a record lists one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Entry {
    /// In `spki_sha256`, as lowercase hex.
    Spki(String),
    /// In `ssh_keys`, as the trimmed line.
    Ssh(String),
}

/// One key: its SPKI SHA-256 and its entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Resolved {
    pub(super) hash: Sha256Hash,
    pub(super) entry: Entry,
}

fn invalid(what: String) -> AdminError {
    AdminError::Invalid(vec![what])
}

fn read(flag: &str, path: &PathBuf) -> Result<String, AdminError> {
    std::fs::read_to_string(path).map_err(|e| invalid(format!("{flag} {}: {e}", path.display())))
}

fn ssh(flag: &str, line: &str) -> Result<Resolved, AdminError> {
    let der = ssh_key_spki(line).map_err(|e| invalid(format!("{flag}: {e}")))?;
    Ok(Resolved {
        hash: Sha256::digest(&der).into(),
        entry: Entry::Ssh(line.trim().to_string()),
    })
}

impl KeyInput {
    /// The keys, checked: a bad hash, an unreadable file or an unsupported SSH key is an
    /// [`AdminError::Invalid`].
    pub(super) fn resolve(&self) -> Result<Vec<Resolved>, AdminError> {
        let spki = |hash: Sha256Hash| Resolved {
            hash,
            entry: Entry::Spki(hex(&hash)),
        };
        match self {
            KeyInput::Spki(s) => {
                let h = normalized("--spki", s)?;
                parse_sha256(&h)
                    .map(|h| vec![spki(h)])
                    .map_err(|e| invalid(format!("--spki: {e}")))
            }
            KeyInput::CertFile(path) => {
                let text = read("--cert", path)?;
                crate::pki::fingerprint(&text)
                    .map(|h| vec![spki(h)])
                    .map_err(|e| invalid(format!("--cert {}: {e}", path.display())))
            }
            KeyInput::SshKey(line) => Ok(vec![ssh("--ssh-key", line)?]),
            KeyInput::SshKeyFile(path) => {
                let flag = format!("--ssh-key-file {}", path.display());
                let keys = read("--ssh-key-file", path)?
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(|l| ssh(&flag, l))
                    .collect::<Result<Vec<_>, _>>()?;
                if keys.is_empty() {
                    return Err(invalid(format!("{flag}: no key in it")));
                }
                Ok(keys)
            }
        }
    }
}

/// The SPKI SHA-256 of every key a record lists (entries that do not parse are left out:
/// validation reports them).
pub(super) fn record_keys(r: &TenantRecord) -> Vec<Sha256Hash> {
    let spki = r.spki_sha256.iter().filter_map(|s| parse_sha256(s).ok());
    let ssh = r
        .ssh_keys
        .iter()
        .filter_map(|l| ssh_key_spki(l).ok())
        .map(|der| Sha256::digest(&der).into());
    spki.chain(ssh).collect()
}

/// Removes every entry of `r` whose key is in `hashes`; returns how many.
pub(super) fn remove_keys(r: &mut TenantRecord, hashes: &[Sha256Hash]) -> usize {
    let before = r.spki_sha256.len() + r.ssh_keys.len();
    r.spki_sha256
        .retain(|s| parse_sha256(s).map_or(true, |h| !hashes.contains(&h)));
    r.ssh_keys.retain(|l| {
        ssh_key_spki(l).map_or(true, |der| {
            let h: Sha256Hash = Sha256::digest(&der).into();
            !hashes.contains(&h)
        })
    });
    before - r.spki_sha256.len() - r.ssh_keys.len()
}
