//! `lookout tenants`: operators' edits of the tenants in etcd (layout: [`super::etcd`]).
//!
//! Every edit is a read-modify-write of one key, committed by a transaction that succeeds only
//! if no tenants key changed since the read (a `mod_revision` compare over the whole tenants
//! range, plus one on the edited key, which also catches its deletion); otherwise it reads
//! again and retries, a bounded number of times. Concurrent edits are therefore applied one
//! after the other, never lost, and each is validated against the set it lands in.
//!
//! Validation is the proxy's ([`Tenants::from_sources`]): the edited set of etcd — together
//! with the tenants file when one is given ([`Target::file`]), as proxies merging both would
//! see it — must not gain a problem. Problems already there before the edit do not block it
//! (they are reported), so a broken record can always be fixed or removed; any new problem
//! refuses the edit and nothing is written ([`AdminError::Invalid`], exit status 2).
//!
//! Secrets: a generated token is returned once, in [`Outcome::stdout`]; only its SHA-256 is
//! stored. Not here: argument parsing (`src/main.rs`).

mod credential;
mod edit;
mod view;

use std::collections::BTreeMap;
use std::hash::BuildHasher;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lookout_discovery::etcd::range::{self, RangeRead};
use lookout_discovery::etcd::{
    self as discovery_etcd, Client, EtcdConfig, EtcdError, EtcdTlsConfig, Keys,
};
use sha2::{Digest, Sha256};

use super::etcd::decode_kvs;
use super::{hex, RateLimit, Source, TenantRecord, Tenants};
use crate::config::ProxyConfig;

pub use credential::KeyInput;

/// Most attempts of one edit when other writers keep changing the tenants meanwhile.
pub const MAX_ATTEMPTS: u32 = 30;

/// What `lookout tenants` does.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Every tenant, one line each, then the defaults and the revoked keys.
    List,
    /// One tenant's record, as stored (JSON).
    Show {
        /// The tenant.
        name: String,
    },
    /// A new tenant.
    Add {
        /// Its record: name, roles, `cert_cn` (unset: its name), rate limit.
        record: TenantRecord,
    },
    /// Registers public keys (certificate keys by SPKI SHA-256, or SSH keys).
    AddKey {
        /// The tenant.
        name: String,
        /// The keys.
        key: KeyInput,
    },
    /// Registers a bearer token: a new random one (returned once), or a given hash.
    AddToken {
        /// The tenant.
        name: String,
        /// The token's SHA-256 (hex or base64); `None`: generate a token.
        sha256: Option<String>,
    },
    /// Sets or clears a rate limit: a tenant's, or (`name` unset) the default.
    SetLimit {
        /// The tenant; `None`: `[defaults]`.
        name: Option<String>,
        /// The limit; `None`: remove it (the tenant falls back to the default, the default
        /// to the built-in one).
        rate: Option<RateLimit>,
    },
    /// Unregisters keys (by SPKI SHA-256: a matching SSH key goes too).
    RemoveKey {
        /// The tenant.
        name: String,
        /// The keys.
        key: KeyInput,
    },
    /// Unregisters a token by its SHA-256.
    RemoveToken {
        /// The tenant.
        name: String,
        /// The token's SHA-256.
        sha256: String,
    },
    /// Adds keys to `[revoked]`.
    Revoke {
        /// The keys.
        key: KeyInput,
    },
    /// Removes keys from `[revoked]`.
    Unrevoke {
        /// The keys.
        key: KeyInput,
    },
    /// Removes a tenant.
    Remove {
        /// The tenant.
        name: String,
    },
}

/// Where the tenants live: an etcd connection and prefix, and optionally the tenants file
/// proxies merge them with.
#[derive(Debug, Clone)]
pub struct Target {
    /// The etcd connection and prefix.
    pub etcd: EtcdConfig,
    /// A tenants file to validate against as well: edits that would conflict with it are
    /// refused.
    pub file: Option<PathBuf>,
    /// Notes about how the target was chosen, for the operator.
    pub notes: Vec<String>,
}

impl Target {
    /// From command-line settings.
    pub fn from_flags(
        endpoints: Vec<String>,
        prefix: String,
        tls: Option<EtcdTlsConfig>,
    ) -> Result<Target, AdminError> {
        let etcd = EtcdConfig {
            prefix,
            tls,
            ..EtcdConfig::new(endpoints)
        };
        check(&etcd, "")?;
        Ok(Target {
            etcd,
            file: None,
            notes: Vec::new(),
        })
    }

    /// From a proxy configuration: its `[tenants] etcd` connection (else its `[inventory]`
    /// etcd one) and its tenants file.
    pub fn from_proxy_config(path: &Path) -> Result<Target, AdminError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| AdminError::Config(format!("{}: {e}", path.display())))?;
        let cfg = ProxyConfig::parse(&text)
            .map_err(|e| AdminError::Config(format!("{}: {e}", path.display())))?;
        let mut notes = Vec::new();
        let etcd = match (cfg.tenants_etcd(), &cfg.inventory) {
            (Some(e), _) => e.clone(),
            (None, crate::config::InventoryConfig::Etcd(e)) => {
                notes.push(format!(
                    "{} does not read tenants from etcd ([tenants] etcd): its proxies ignore \
                     these until it does",
                    path.display()
                ));
                e.clone()
            }
            (None, _) => {
                return Err(AdminError::Config(format!(
                    "{}: no etcd connection ([tenants] etcd or [inventory] source = \"etcd\")",
                    path.display()
                )))
            }
        };
        check(&etcd, "etcd.")?;
        Ok(Target {
            etcd,
            file: cfg.tenants_file,
            notes,
        })
    }
}

fn check(etcd: &EtcdConfig, what: &str) -> Result<(), AdminError> {
    let problems: Vec<String> = etcd
        .problems()
        .into_iter()
        .map(|p| format!("{what}{p}"))
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(AdminError::Config(problems.join("; ")))
    }
}

/// Why a command did nothing.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The edit would make the tenants invalid: every new problem. Nothing was written.
    #[error("refused, nothing written:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
    /// The command does not apply: no such tenant or key, the tenant exists already.
    #[error("{0}")]
    Refused(String),
    /// The settings are unusable.
    #[error("{0}")]
    Config(String),
    /// etcd could not be reached or failed.
    #[error("etcd: {0}")]
    Etcd(#[from] EtcdError),
    /// Other writers changed the tenants at every attempt.
    #[error("gave up after {0} attempts: the tenants kept changing under this edit")]
    Contended(u32),
}

impl AdminError {
    /// The process exit status: 2 for refusals of what was asked (invalid edits, unusable
    /// settings), 1 when it could not be done (nothing to act on, etcd failing).
    pub fn exit_code(&self) -> u8 {
        match self {
            AdminError::Invalid(_) | AdminError::Config(_) => 2,
            AdminError::Refused(_) | AdminError::Etcd(_) | AdminError::Contended(_) => 1,
        }
    }
}

/// What a command has to say: `stdout` (the listing, a record, a generated token) and
/// `notes` for stderr.
#[derive(Debug, Default)]
pub struct Outcome {
    /// For standard output.
    pub stdout: String,
    /// For standard error: confirmations, warnings.
    pub notes: Vec<String>,
}

/// Runs one command against `target`.
pub async fn run(target: Target, command: Command) -> Result<Outcome, AdminError> {
    let admin = Admin::connect(target).await?;
    let mut out = Outcome {
        notes: admin.notes.clone(),
        ..Outcome::default()
    };
    match command {
        Command::List => admin.list(&mut out).await?,
        Command::Show { name } => admin.show(&name, &mut out).await?,
        command => edit::apply(&admin, command, &mut out).await?,
    }
    Ok(out)
}

/// What an edit writes.
enum Write {
    Put(Vec<u8>),
    Delete,
    /// Nothing to do (already so); the note says why.
    Nothing(String),
}

struct Admin {
    client: Client,
    config: EtcdConfig,
    keys: Keys,
    file: Option<Source>,
    notes: Vec<String>,
}

fn no_tenant(name: &str) -> AdminError {
    AdminError::Refused(format!("no tenant {name:?} in etcd"))
}

impl Admin {
    async fn connect(target: Target) -> Result<Admin, AdminError> {
        let mut notes = target.notes;
        let file = target.file.and_then(|path| {
            let source = Source::from_file(&path);
            if source.problems.iter().any(|p| p.starts_with("cannot read")) {
                notes.push(format!(
                    "tenants file {} cannot be read here; checking against etcd only",
                    path.display()
                ));
                return None;
            }
            Some(source)
        });
        let client = discovery_etcd::connect(&target.etcd).await?;
        Ok(Admin {
            client,
            keys: Keys::new(target.etcd.prefix.clone()),
            config: target.etcd,
            file,
            notes,
        })
    }

    /// Reads the whole tenants range at one revision.
    async fn read(&self) -> Result<RangeRead, AdminError> {
        let (start, end) = self.keys.tenants_range();
        let timeout = self.config.request_timeout;
        Ok(range::read_range(&self.client, &start, &end, timeout).await?)
    }

    /// Every problem of the set proxies would build from these etcd keys (and the file).
    fn problems(&self, kvs: &BTreeMap<Vec<u8>, Vec<u8>>) -> Vec<String> {
        let etcd = decode_kvs(&self.keys, kvs, self.config.max_value_bytes);
        let sources: Vec<Source> = self.file.iter().cloned().chain([etcd]).collect();
        Tenants::from_sources(&sources)
            .err()
            .map_or_else(Vec::new, |e| e.problems)
    }

    /// Read-modify-write of `key`: `change` gets its current value and says what to write;
    /// the write is validated, then committed if no tenants key changed meanwhile, else
    /// everything is read again (up to [`MAX_ATTEMPTS`] times). True when it wrote.
    async fn edit(
        &self,
        key: &str,
        out: &mut Outcome,
        mut change: impl FnMut(Option<&[u8]>) -> Result<Write, AdminError>,
    ) -> Result<bool, AdminError> {
        let k = key.as_bytes().to_vec();
        let (start, end) = self.keys.tenants_range();
        let jitter = std::collections::hash_map::RandomState::new();
        for attempt in 1..=MAX_ATTEMPTS {
            let read = self.read().await?;
            let write = change(read.kvs.get(&k).map(Vec::as_slice))?;
            let mut after = read.kvs.clone();
            let write = match write {
                Write::Nothing(note) => {
                    out.notes.push(note);
                    return Ok(false);
                }
                Write::Put(value) => {
                    after.insert(k.clone(), value.clone());
                    range::Write::Put(value)
                }
                Write::Delete => {
                    after.remove(&k);
                    range::Write::Delete
                }
            };
            let before = self.problems(&read.kvs);
            let new: Vec<String> = self
                .problems(&after)
                .into_iter()
                .filter(|p| !before.contains(p))
                .collect();
            if !new.is_empty() {
                return Err(AdminError::Invalid(new));
            }
            let bounds = (start.as_slice(), end.as_slice());
            let timeout = self.config.request_timeout;
            let written =
                range::write_if_unchanged(&self.client, bounds, &read, &k, write, timeout).await?;
            if written {
                if !before.is_empty() {
                    out.notes.push(format!(
                        "warning: the tenants already had problems, so proxies keep their last \
                         good tenants until they are fixed:\n  - {}",
                        before.join("\n  - ")
                    ));
                }
                return Ok(true);
            }
            // Someone else wrote meanwhile: read again, after a short randomised pause so
            // that writers racing each other spread out.
            let ms = 5 * u64::from(attempt) + jitter.hash_one(attempt) % 40;
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        Err(AdminError::Contended(MAX_ATTEMPTS))
    }
}

/// A new bearer token: `lookout-` and 32 random bytes (from the ring provider's system
/// random source), base64url — and its SHA-256, the only part stored.
fn new_token() -> Result<(String, [u8; 32]), AdminError> {
    use base64::Engine as _;
    let mut bytes = [0u8; 32];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| AdminError::Config("the system's random source failed".into()))?;
    let token = format!(
        "lookout-{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let hash = Sha256::digest(token.as_bytes()).into();
    Ok((token, hash))
}

/// The hex form of a digest given in any accepted form, or the problem.
fn normalized(what: &str, s: &str) -> Result<String, AdminError> {
    super::parse_sha256(s)
        .map(|h| hex(&h))
        .map_err(|e| AdminError::Invalid(vec![format!("{what}: {e}")]))
}

fn decode_record(name: &str, value: &[u8]) -> Result<TenantRecord, AdminError> {
    serde_json::from_slice(value).map_err(|e| {
        AdminError::Refused(format!(
            "the record of tenant {name:?} in etcd is not valid ({e}); remove it and add it again"
        ))
    })
}

fn decode_or_default<T: serde::de::DeserializeOwned + Default>(
    key: &str,
    value: Option<&[u8]>,
) -> Result<T, AdminError> {
    match value {
        None => Ok(T::default()),
        Some(v) => serde_json::from_slice(v).map_err(|e| {
            AdminError::Refused(format!(
                "{key} is not valid ({e}); fix or delete it with etcdctl"
            ))
        }),
    }
}
