//! Every route's rollout, persisted in the state file and, in a fleet,
//! shared through the cluster store like blocks are (latest change wins;
//! changes made here stay pending until the store has them). Snapshot
//! builds read the share in force from here, so a reload keeps the
//! rollout's percent, not the file's.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use super::plan::Rollout;
use crate::cluster::record::{Body, SharedRecord, Stamp};
use crate::config::RouteSpec;
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

    /// `spec` with the rollout's share in force (what a snapshot compiles).
    pub fn effective(&self, spec: &RouteSpec) -> RouteSpec {
        let mut out = spec.clone();
        if let (Some(r), Some(bp)) = (&spec.rollout, self.share_bp(spec)) {
            if let Some(v) = out.versions.get_mut(r.version) {
                v.basis_points = bp;
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
            self.persist(&copy)?;
            *all = copy;
        }
        Ok((next.rollout, out))
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
