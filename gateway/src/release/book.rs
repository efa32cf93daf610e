//! Every route's rollout, persisted in the state file (and, in a fleet,
//! mirrored by the controller through the cluster store). Snapshot builds
//! read the share in force from here, so a reload keeps the rollout's
//! percent, not the file's.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use super::plan::Rollout;
use crate::config::RouteSpec;
use crate::control::state::{StateError, StateFile};

#[derive(Default)]
pub struct RolloutBook {
    /// `None` in `gateway check` and table tests: nothing is persisted.
    state: Option<Arc<StateFile>>,
    rollouts: Mutex<BTreeMap<String, Rollout>>,
}

impl RolloutBook {
    pub fn open(state: Arc<StateFile>, persisted: BTreeMap<String, Rollout>) -> RolloutBook {
        RolloutBook { state: Some(state), rollouts: Mutex::new(persisted) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Rollout>> {
        self.rollouts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn get(&self, route: &str) -> Option<Rollout> {
        self.lock().get(route).cloned()
    }

    /// The rolled-out version's share in force for `spec`, basis points;
    /// `None`: the file's (no rollout, or pending).
    pub fn share_bp(&self, spec: &RouteSpec) -> Option<u32> {
        spec.rollout.as_ref()?;
        self.lock().get(&spec.name)?.share_bp
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

    /// Change one route's rollout (created pending with `revision` if new):
    /// persisted first, then in force. Returns the rollout after the change.
    pub fn update<T>(
        &self,
        route: &str,
        revision: &str,
        f: impl FnOnce(&mut Rollout) -> T,
    ) -> Result<(Rollout, T), StateError> {
        let mut all = self.lock();
        let mut next = all.get(route).cloned().unwrap_or_else(|| Rollout::new(revision.to_string()));
        let out = f(&mut next);
        if all.get(route) != Some(&next) {
            if let Some(state) = &self.state {
                let mut copy = all.clone();
                copy.insert(route.to_string(), next.clone());
                state.update(|s| s.rollouts = copy)?;
            }
            all.insert(route.to_string(), next.clone());
        }
        Ok((next, out))
    }

    /// Replace a route's rollout with one from the fleet (already decided elsewhere).
    pub fn set(&self, route: &str, rollout: Rollout) -> Result<bool, StateError> {
        self.update(route, &rollout.revision.clone(), |r| {
            let changed = *r != rollout;
            *r = rollout;
            changed
        })
        .map(|(_, changed)| changed)
    }
}
