//! The editing commands, each a read-modify-write of one key through [`Admin::edit`].

use super::credential::{self, Entry};
use super::{
    decode_or_default, decode_record, new_token, no_tenant, normalized, Admin, AdminError, Command,
    Outcome, Write,
};
use crate::tenants::etcd::{encode, DEFAULTS, REVOKED};
use crate::tenants::{hex, parse_sha256, valid_tenant_name, Defaults, Revoked, TenantRecord};

/// Runs an editing command (not `List` or `Show`).
pub(super) async fn apply(
    admin: &Admin,
    command: Command,
    out: &mut Outcome,
) -> Result<(), AdminError> {
    match command {
        Command::List | Command::Show { .. } => Ok(()),
        Command::Add { record } => add(admin, record, out).await,
        Command::Remove { name } => {
            let key = admin.keys.tenant(&name);
            admin
                .edit(&key, out, |cur| match cur {
                    Some(_) => Ok(Write::Delete),
                    None => Err(no_tenant(&name)),
                })
                .await?;
            out.notes.push(format!("tenant {name:?}: removed"));
            Ok(())
        }
        Command::AddKey { name, key } => {
            let keys = key.resolve()?;
            let wrote = update(admin, &name, out, |r| {
                let have = credential::record_keys(r);
                let mut added = false;
                for k in keys.iter().filter(|k| !have.contains(&k.hash)) {
                    match &k.entry {
                        Entry::Spki(h) => r.spki_sha256.push(h.clone()),
                        Entry::Ssh(l) => r.ssh_keys.push(l.clone()),
                    }
                    added = true;
                }
                Ok((!added).then(|| format!("tenant {name:?}: already has the key")))
            })
            .await?;
            if wrote {
                for k in &keys {
                    out.notes.push(format!(
                        "tenant {name:?}: key registered (spki_sha256 {})",
                        hex(&k.hash)
                    ));
                }
            }
            Ok(())
        }
        Command::AddToken { name, sha256 } => {
            let (token, hash) = match sha256 {
                Some(s) => (None, normalized("--token-sha256", &s)?),
                None => {
                    let (token, hash) = new_token()?;
                    (Some(token), hex(&hash))
                }
            };
            let wrote = update(admin, &name, out, |r| {
                let h = parse_sha256(&hash).ok();
                if r.token_sha256.iter().any(|t| parse_sha256(t).ok() == h) {
                    return Ok(Some(format!("tenant {name:?}: already has the token")));
                }
                r.token_sha256.push(hash.clone());
                Ok(None)
            })
            .await?;
            if wrote {
                out.notes.push(format!(
                    "tenant {name:?}: token registered (token_sha256 {hash})"
                ));
                if let Some(token) = token {
                    out.stdout = format!("{token}\n");
                    out.notes.push(
                        "the token is printed once and not stored anywhere: keep it now".into(),
                    );
                }
            }
            Ok(())
        }
        Command::SetLimit {
            name: Some(name),
            rate,
        } => {
            update(admin, &name, out, |r| {
                if r.rate_limit == rate {
                    return Ok(Some(format!("tenant {name:?}: rate limit unchanged")));
                }
                r.rate_limit = rate;
                Ok(None)
            })
            .await?;
            out.notes
                .push(format!("tenant {name:?}: rate limit {}", show(rate)));
            Ok(())
        }
        Command::SetLimit { name: None, rate } => {
            let key = admin.keys.tenants_config(DEFAULTS);
            admin
                .edit(&key, out, |cur| {
                    let mut d: Defaults = decode_or_default(&key, cur)?;
                    if d.rate_limit == rate {
                        return Ok(Write::Nothing("default rate limit unchanged".into()));
                    }
                    d.rate_limit = rate;
                    Ok(match d.rate_limit {
                        None => Write::Delete,
                        Some(_) => Write::Put(encode(&d)),
                    })
                })
                .await?;
            out.notes
                .push(format!("default rate limit: {}", show(rate)));
            Ok(())
        }
        Command::RemoveKey { name, key } => {
            let hashes: Vec<_> = key.resolve()?.into_iter().map(|k| k.hash).collect();
            update(admin, &name, out, |r| {
                match credential::remove_keys(r, &hashes) {
                    0 => Err(AdminError::Refused(format!(
                        "tenant {name:?} has no such key"
                    ))),
                    _ => Ok(None),
                }
            })
            .await?;
            out.notes.push(format!("tenant {name:?}: key removed"));
            Ok(())
        }
        Command::RemoveToken { name, sha256 } => {
            let hash = parse_sha256(&normalized("--token-sha256", &sha256)?).ok();
            update(admin, &name, out, |r| {
                let before = r.token_sha256.len();
                r.token_sha256.retain(|t| parse_sha256(t).ok() != hash);
                if r.token_sha256.len() == before {
                    return Err(AdminError::Refused(format!(
                        "tenant {name:?} has no such token"
                    )));
                }
                Ok(None)
            })
            .await?;
            out.notes.push(format!("tenant {name:?}: token removed"));
            Ok(())
        }
        Command::Revoke { key } => revoked(admin, key, true, out).await,
        Command::Unrevoke { key } => revoked(admin, key, false, out).await,
    }
}

async fn add(admin: &Admin, record: TenantRecord, out: &mut Outcome) -> Result<(), AdminError> {
    let name = record.name.clone();
    // Checked before the key is built: a name with '/' would make a key of another form,
    // which the proxies would ignore rather than validate.
    if !valid_tenant_name(&name) {
        return Err(AdminError::Invalid(vec![format!(
            "tenant {name:?}: name must be 1–63 characters of a-z, A-Z, 0-9, '.', '_', '-'"
        )]));
    }
    let value = encode(&record);
    admin
        .edit(&admin.keys.tenant(&name), out, |cur| match cur {
            Some(_) => Err(AdminError::Refused(format!(
                "tenant {name:?} exists in etcd already"
            ))),
            None => Ok(Write::Put(value.clone())),
        })
        .await?;
    out.notes.push(format!("tenant {name:?}: added"));
    Ok(())
}

/// Read-modify-write of one tenant's record: `f` changes it, or returns a note saying why
/// nothing needs to change. True when it wrote.
async fn update(
    admin: &Admin,
    name: &str,
    out: &mut Outcome,
    mut f: impl FnMut(&mut TenantRecord) -> Result<Option<String>, AdminError>,
) -> Result<bool, AdminError> {
    let key = admin.keys.tenant(name);
    admin
        .edit(&key, out, |cur| {
            let mut r = decode_record(name, cur.ok_or_else(|| no_tenant(name))?)?;
            Ok(match f(&mut r)? {
                Some(note) => Write::Nothing(note),
                None => Write::Put(encode(&r)),
            })
        })
        .await
}

/// Adds keys to `[revoked]` (`add`) or removes them.
async fn revoked(
    admin: &Admin,
    key: super::KeyInput,
    add: bool,
    out: &mut Outcome,
) -> Result<(), AdminError> {
    let hashes: Vec<_> = key.resolve()?.into_iter().map(|k| k.hash).collect();
    let k = admin.keys.tenants_config(REVOKED);
    admin
        .edit(&k, out, |cur| {
            let mut r: Revoked = decode_or_default(&k, cur)?;
            let listed = |r: &Revoked, h| {
                r.spki_sha256
                    .iter()
                    .any(|s| parse_sha256(s).ok() == Some(h))
            };
            if add {
                let new: Vec<String> = hashes
                    .iter()
                    .filter(|&&h| !listed(&r, h))
                    .map(|h| hex(h))
                    .collect();
                if new.is_empty() {
                    return Ok(Write::Nothing("already revoked".into()));
                }
                r.spki_sha256.extend(new);
            } else {
                let before = r.spki_sha256.len();
                r.spki_sha256
                    .retain(|s| parse_sha256(s).map_or(true, |h| !hashes.contains(&h)));
                if r.spki_sha256.len() == before {
                    return Err(AdminError::Refused("no such key is revoked".into()));
                }
            }
            Ok(if r.spki_sha256.is_empty() {
                Write::Delete
            } else {
                Write::Put(encode(&r))
            })
        })
        .await?;
    for h in &hashes {
        let what = if add { "revoked" } else { "no longer revoked" };
        out.notes.push(format!("key {}: {what}", hex(h)));
    }
    Ok(())
}

fn show(rate: Option<crate::tenants::RateLimit>) -> String {
    rate.map_or_else(|| "cleared".into(), super::view::show_rate)
}
