//! The tenants in force: from the tenants file, from etcd, or both merged, swapped atomically
//! when either changes.
//!
//! - **Level-triggered**: every change rebuilds the set from the latest input of *both*
//!   sources (the file as last read, etcd as last mirrored) through the one validator
//!   ([`Tenants::from_sources`]). A set with any problem — in either source, or a tenant or
//!   credential defined in both — is refused whole and the last good set stays in force; the
//!   caller logs and counts it. The set in force is therefore always one that both sources
//!   held at once.
//! - **Each change is a new `Arc`**: connections cache their identity against the `Arc` they
//!   authenticated with (`server::handler`), so a removed token stops working on open
//!   connections at their next request, without dropping them.
//! - **etcd unreachable** changes nothing here: the mirror keeps its last snapshot and the
//!   last set stays in force; [`ReloadingTenants::readiness`] says so.
//!
//! Not here: watching etcd (`lookout_discovery::etcd::Mirror`, wired in `server`).

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use arc_swap::ArcSwap;

use super::{Source, Tenants, TenantsError};

/// Whether the tenants in force are what the proxy was configured to serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// Every configured source is in the set in force.
    Ready,
    /// The tenants of etcd were loaded, but etcd is failing now: the last set stays.
    Stale(String),
    /// The tenants of etcd were never part of the set in force (not read yet, or refused).
    NotReady(String),
}

/// The live tenants.
pub struct ReloadingTenants {
    file: Option<PathBuf>,
    inputs: Mutex<Inputs>,
    current: ArcSwap<Tenants>,
}

struct Inputs {
    /// Modification time and size of the file when last read.
    stamp: Option<(SystemTime, u64)>,
    /// The file as last read.
    file: Option<Source>,
    /// Whether tenants come from etcd too.
    etcd: bool,
    /// etcd's tenants as last mirrored (`None` until the first read).
    etcd_source: Option<Source>,
    /// True once a set including etcd's tenants was in force.
    etcd_applied: bool,
    /// The mirror's current failure.
    etcd_error: Option<String>,
    /// Why the last rebuild was refused, while it is the latest word.
    refused: Option<String>,
}

fn stamp(path: &std::path::Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

impl ReloadingTenants {
    /// Loads the file, if any (its problems refuse the start, as before etcd existed). With
    /// `etcd`, tenants from etcd join once [`ReloadingTenants::set_etcd`] first delivers them;
    /// until then the file's (or no) tenants are in force.
    pub fn new(file: Option<PathBuf>, etcd: bool) -> Result<Self, TenantsError> {
        let (stamp, source) = match &file {
            Some(path) => (stamp(path), Some(Source::from_file(path))),
            None => (None, None),
        };
        let tenants = Tenants::from_sources(source.as_slice())?;
        Ok(ReloadingTenants {
            file,
            inputs: Mutex::new(Inputs {
                stamp,
                file: source,
                etcd,
                etcd_source: None,
                etcd_applied: false,
                etcd_error: None,
                refused: None,
            }),
            current: ArcSwap::from_pointee(tenants),
        })
    }

    /// The tenants in force.
    pub fn current(&self) -> Arc<Tenants> {
        self.current.load_full()
    }

    fn inputs(&self) -> MutexGuard<'_, Inputs> {
        self.inputs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Re-reads the file if it changed: `Ok(Some(new))` when new tenants are in force, `Err`
    /// when the new set is refused (the old tenants stay), `Ok(None)` when nothing changed.
    pub fn reload_if_changed(&self) -> Result<Option<Arc<Tenants>>, TenantsError> {
        let Some(path) = &self.file else {
            return Ok(None);
        };
        let mut inputs = self.inputs();
        let now = stamp(path);
        if inputs.stamp == now {
            return Ok(None);
        }
        inputs.stamp = now;
        inputs.file = Some(Source::from_file(path));
        self.rebuild(&mut inputs).map(Some)
    }

    /// Takes etcd's tenants as now mirrored: `Ok(new)` when they are in force, `Err` when the
    /// merged set is refused (the old tenants stay).
    pub fn set_etcd(&self, source: Source) -> Result<Arc<Tenants>, TenantsError> {
        let mut inputs = self.inputs();
        inputs.etcd_source = Some(source);
        self.rebuild(&mut inputs)
    }

    /// Records the etcd mirror's current failure (`None`: it works again), for
    /// [`ReloadingTenants::readiness`].
    pub fn set_etcd_error(&self, error: Option<String>) {
        self.inputs().etcd_error = error;
    }

    /// Whether the tenants in force include every configured source.
    pub fn readiness(&self) -> Readiness {
        let inputs = self.inputs();
        match (inputs.etcd, inputs.etcd_applied) {
            (false, _) => Readiness::Ready,
            (true, false) => {
                let why = inputs
                    .refused
                    .clone()
                    .or_else(|| inputs.etcd_error.clone())
                    .unwrap_or_else(|| "not read yet".into());
                Readiness::NotReady(format!("tenants from etcd not loaded: {why}"))
            }
            (true, true) => match &inputs.etcd_error {
                Some(e) => Readiness::Stale(format!("serving the last tenants; {e}")),
                None => Readiness::Ready,
            },
        }
    }

    fn rebuild(&self, inputs: &mut Inputs) -> Result<Arc<Tenants>, TenantsError> {
        let sources: Vec<Source> = inputs
            .file
            .iter()
            .chain(inputs.etcd_source.iter())
            .cloned()
            .collect();
        match Tenants::from_sources(&sources) {
            Ok(t) => {
                let t = Arc::new(t);
                self.current.store(Arc::clone(&t));
                inputs.etcd_applied |= inputs.etcd_source.is_some();
                inputs.refused = None;
                Ok(t)
            }
            Err(e) => {
                let first = e.problems.first().map_or("", String::as_str);
                let more = match e.problems.len() {
                    0 | 1 => String::new(),
                    n => format!(" (and {} more)", n - 1),
                };
                inputs.refused = Some(format!("refused: {first}{more}"));
                Err(e)
            }
        }
    }
}
