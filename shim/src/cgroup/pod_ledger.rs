//! The OOM kills a pod's cgroup counted, for the containers whose own
//! cgroup is gone before their kill is read (see `oom`).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, Weak},
};

use super::{read_oom_kills, ContainerCgroup};

/// OOM kills counted by a pod's cgroup (the parent of its containers'
/// cgroups on v2) and how many of them the pod's containers have told.
pub struct PodLedger {
    file: PathBuf,
    /// (the parent's counter when the ledger began, kills told since).
    counts: Mutex<(u64, u64)>,
}

impl PodLedger {
    fn new(parent: &Path) -> Option<Arc<PodLedger>> {
        let file = parent.join("memory.events");
        let base = read_oom_kills(&file)?;
        Some(Arc::new(PodLedger {
            file,
            counts: Mutex::new((base, 0)),
        }))
    }

    pub(super) fn told(&self, n: u64) {
        self.counts.lock().unwrap_or_else(|e| e.into_inner()).1 += n;
    }

    /// True, and counted as told, when the parent has a kill nobody told.
    pub(super) fn take_untold(&self) -> bool {
        let Some(now) = read_oom_kills(&self.file) else {
            return false;
        };
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let untold = now > c.0 + c.1;
        if untold {
            c.1 += 1;
        }
        untold
    }
}

/// The ledgers of the pods' cgroups a shim watches, by parent directory
/// (one shim serves one pod: in practice one entry).
#[derive(Default)]
pub struct PodLedgers(Mutex<HashMap<PathBuf, Weak<PodLedger>>>);

impl PodLedgers {
    /// The ledger of the parent of `cg` (v2 only: v1 counters are local).
    pub(super) fn of(&self, cg: &ContainerCgroup) -> Option<Arc<PodLedger>> {
        if !cg.unified {
            return None;
        }
        let parent = cg.dir.parent()?;
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, l| l.strong_count() > 0);
        if let Some(l) = map.get(parent).and_then(Weak::upgrade) {
            return Some(l);
        }
        let l = PodLedger::new(parent)?;
        map.insert(parent.to_path_buf(), Arc::downgrade(&l));
        Some(l)
    }
}
