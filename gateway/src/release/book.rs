//! Every route's rollout, persisted in the state file and, in a fleet,
//! shared through the cluster store like blocks are (latest change wins;
//! changes made here stay pending until the store has them). Snapshot
//! builds read the share in force from here, so a reload keeps the
//! rollout's percent, not the file's.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use super::plan::Rollout;
use crate::cluster::record::{Body, SharedRecord, Stamp};
use crate::config::{GatewayConfig, RouteSpec};
use crate::control::runtime::Sharing;
use crate::control::state::{StateError, StateFile};

/// One route's rollout with the stamp of its latest change.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Entry {
    #[serde(flatten)]
    pub rollout: Rollout,
    #[serde(default)]
    pub stamp: Option<Stamp>,
    /// Not yet in the cluster store.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pending: bool,
}

#[derive(Default)]
pub struct RolloutBook {
    /// `None` in `gateway check` and table tests: nothing is persisted.
    state: Option<Arc<StateFile>>,
    sharing: Option<Sharing>,
    entries: Mutex<BTreeMap<String, Entry>>,
}

impl RolloutBook {
    pub fn open(state: Arc<StateFile>, persisted: BTreeMap<String, Entry>, sharing: Sharing) -> RolloutBook {
        RolloutBook { state: Some(state), sharing: Some(sharing), entries: Mutex::new(persisted) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn fleet(&self) -> bool {
        self.sharing.as_ref().is_some_and(|s| s.fleet)
    }

    pub fn get(&self, route: &str) -> Option<Rollout> {
        self.lock().get(route).map(|e| e.rollout.clone())
    }

    /// The rolled-out version's share in force for `spec`, basis points;
    /// `None`: the file's (no rollout, or pending).
    pub fn share_bp(&self, spec: &RouteSpec) -> Option<u32> {
        spec.rollout.as_ref()?;
        self.lock().get(&spec.name)?.rollout.share_bp
    }

    /// `spec` with the rollout's share in force (what a snapshot compiles),
    /// for `config` (the config being compiled). A rollout recorded for
    /// another build of the version (its upstream changed since) does not
    /// apply: the file's share holds until the controller starts the new
    /// build's analysis. The share never exceeds what the other versions leave.
    pub fn effective(&self, spec: &RouteSpec, config: &GatewayConfig) -> RouteSpec {
        let mut out = spec.clone();
        let Some(r) = &spec.rollout else { return out };
        let share = {
            let all = self.lock();
            all.get(&spec.name)
                .filter(|e| e.rollout.revision == revision(config, spec, r.version))
                .and_then(|e| e.rollout.share_bp)
        };
        if let Some(bp) = share {
            let others: u32 = spec
                .versions
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != r.version && *i != spec.default_version)
                .map(|(_, v)| v.basis_points)
                .sum();
            if let Some(v) = out.versions.get_mut(r.version) {
                v.basis_points = bp.min(10_000u32.saturating_sub(others));
            }
        }
        out
    }

    fn persist(&self, all: &BTreeMap<String, Entry>) -> Result<(), StateError> {
        match &self.state {
            Some(state) => state.update(|s| s.rollouts = all.clone()),
            None => Ok(()),
        }
    }

    /// Change one route's rollout here (created pending with `revision` if
    /// new): stamped, persisted first, then in force; in a fleet, pending
    /// until the store has it. Returns the rollout after the change.
    pub fn update<T>(
        &self,
        route: &str,
        revision: &str,
        f: impl FnOnce(&mut Rollout) -> T,
    ) -> Result<(Rollout, T), StateError> {
        let mut all = self.lock();
        let before = all.get(route).cloned();
        let mut next = before.clone().unwrap_or_else(|| Entry {
            rollout: Rollout::new(revision.to_string()),
            stamp: None,
            pending: false,
        });
        let out = f(&mut next.rollout);
        if before.as_ref().map(|e| &e.rollout) != Some(&next.rollout) {
            let origin = self.sharing.as_ref().map_or("local", |s| s.origin.as_str());
            next.stamp = Some(Stamp::next(origin, next.stamp.as_ref()));
            next.pending = self.fleet();
            let mut copy = all.clone();
            copy.insert(route.to_string(), next.clone());
            // In force even when the file cannot be written: an abort must
            // take the version out now; the next write persists it all.
            let persisted = self.persist(&copy);
            *all = copy;
            if let Err(e) = persisted {
                tracing::error!(target: "rollout", route, error = %e, "the rollout changed but could not be persisted");
            }
        }
        Ok((next.rollout, out))
    }

    /// The stamp of a route's latest change.
    pub fn stamp(&self, route: &str) -> Option<Stamp> {
        self.lock().get(route).and_then(|e| e.stamp.clone())
    }

    /// The record of a route's rollout as the store would hold it.
    pub fn record(&self, route: &str) -> Option<SharedRecord> {
        let all = self.lock();
        let e = all.get(route)?;
        Some(SharedRecord { stamp: e.stamp.clone()?, body: Body::Rollout { rollout: Box::new(e.rollout.clone()) } })
    }

    /// Take the store's record whatever its stamp: a decision made here lost
    /// a race (another replica's change reached the store first).
    pub fn replace(&self, route: &str, record: SharedRecord) -> Result<(), StateError> {
        let Body::Rollout { rollout } = record.body else { return Ok(()) };
        let mut all = self.lock();
        let mut copy = all.clone();
        copy.insert(route.to_string(), Entry { rollout: *rollout, stamp: Some(record.stamp), pending: false });
        let persisted = self.persist(&copy);
        *all = copy;
        persisted
    }

    /// Changes made here that the store does not have yet.
    pub fn pending(&self) -> Vec<(String, SharedRecord)> {
        self.lock()
            .iter()
            .filter(|(_, e)| e.pending)
            .filter_map(|(route, e)| {
                let stamp = e.stamp.clone()?;
                Some((
                    route.clone(),
                    SharedRecord { stamp, body: Body::Rollout { rollout: Box::new(e.rollout.clone()) } },
                ))
            })
            .collect()
    }

    /// The store holds these changes: no longer pending.
    pub fn mark_stored(&self, stored: &[(String, Stamp)]) -> Result<(), StateError> {
        let mut all = self.lock();
        let mut copy = all.clone();
        let mut dirty = false;
        for (route, stamp) in stored {
            if let Some(e) = copy.get_mut(route).filter(|e| e.pending && e.stamp.as_ref() == Some(stamp)) {
                e.pending = false;
                dirty = true;
            }
        }
        if dirty {
            self.persist(&copy)?;
            *all = copy;
        }
        Ok(())
    }

    /// Take in rollout records from the store (latest change wins); with
    /// `complete`, what the store lacks is pushed back. Returns the routes
    /// whose rollout changed.
    pub fn merge(&self, incoming: Vec<(String, SharedRecord)>, complete: bool) -> Result<Vec<String>, StateError> {
        let mut all = self.lock();
        let mut copy = all.clone();
        let mut changed = Vec::new();
        let mut dirty = false;
        let mut present = HashSet::new();
        for (route, record) in incoming {
            present.insert(route.clone());
            let Body::Rollout { rollout } = record.body else { continue };
            match copy.get_mut(&route) {
                Some(e) if e.stamp.as_ref().is_some_and(|s| *s > record.stamp) => {
                    // The store is behind this replica: push ours again.
                    dirty |= !std::mem::replace(&mut e.pending, true);
                }
                Some(e) if e.stamp.as_ref() == Some(&record.stamp) => dirty |= std::mem::replace(&mut e.pending, false),
                _ => {
                    copy.insert(route.clone(), Entry { rollout: *rollout, stamp: Some(record.stamp), pending: false });
                    changed.push(route);
                    dirty = true;
                }
            }
        }
        if complete {
            for (route, e) in copy.iter_mut() {
                if !present.contains(route) && !e.pending && e.stamp.is_some() {
                    e.pending = true;
                    dirty = true;
                }
            }
        }
        if dirty {
            self.persist(&copy)?;
            *all = copy;
        }
        Ok(changed)
    }
}

/// What identifies a build of the rolled-out version: the upstream it uses,
/// with that upstream's backends and TLS target. A change is a new revision
/// (its analysis restarts); timeouts and health checks are not part of it.
pub fn revision(config: &GatewayConfig, spec: &RouteSpec, version: usize) -> String {
    let Some(v) = spec.versions.get(version) else { return String::new() };
    let mut text = v.upstream.clone();
    if let Some(u) = config.upstreams.get(&v.upstream) {
        let mut backends: Vec<String> = u.backends.iter().map(|b| format!("{}*{}", b.addr, b.weight)).collect();
        backends.sort();
        text.push_str(&format!(
            "|{}|tls={}",
            backends.join(","),
            u.tls.as_ref().map_or("-".to_string(), |t| format!("{:?}", t.sni))
        ));
    }
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(text.as_bytes()))
}
