//! The Task API v2 served to containerd, split by lifecycle step:
//!
//! - `ttrpc`: the thin adapter from requests to the steps below;
//! - `registry`: the pod's containers, Create's reservations, Shutdown;
//! - `create` (with its rollback), `start`, `exec`, `kill`, `update`,
//!   `pause`, `query` (State, Wait, Pids, Stats, …);
//! - `exit`: from the reaper to the TaskExit and the early `runc delete`;
//! - `delete`;
//! - `runc_call`: a runc call on a live container that answers at its exit.
//!
//! Every step follows the same pattern: take the container's lock, check
//! and apply a transition (`container_state`), let go, and only then call
//! runc or do I/O. So a slow runc call or unmount on one container never
//! blocks calls that only need state, and never blocks the pod's other
//! containers.

mod create;
mod delete;
mod exec;
mod exit;
mod kill;
mod pause;
mod query;
mod registry;
mod runc_call;
mod start;
mod ttrpc;
mod update;

#[cfg(test)]
mod tests;

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use containerd_shim::asynchronous::ExitSignal;
use containerd_shim_protos::protobuf::{well_known_types::timestamp::Timestamp, MessageField};
use tracing::{debug, info, warn};

use crate::{
    container::Shared,
    detached::{Detached, WorkKey},
    error::Result,
    events::EventSink,
    platform::{Platform, System},
    reaper::Reaper,
};

use registry::Registry;

/// How long a Create, or a shim about to exit, waits for detached cleanup
/// (unmounts, runc deletes) before going on regardless; and how long Delete
/// waits for the calls in flight on its container.
const WORK_WAIT: Duration = Duration::from_secs(60);

/// The task service of one shim, i.e. of one pod.
#[derive(Clone)]
pub struct TaskService {
    inner: Arc<Inner>,
}

struct Inner {
    namespace: String,
    registry: Registry,
    reaper: Reaper,
    events: EventSink,
    exit: Arc<ExitSignal>,
    detached: Detached,
    platform: Arc<dyn Platform>,
    /// OOM kills the pod's cgroup counted, for containers whose own
    /// cgroup is gone before their kill is read (systemd driver).
    oom_ledgers: crate::cgroup::PodLedgers,
}

impl TaskService {
    /// The task service on the real machine: runc binaries whose exits
    /// come from `reaper`, and the kernel's mounts.
    pub fn new(
        namespace: String,
        reaper: Reaper,
        events: EventSink,
        exit: Arc<ExitSignal>,
        detached: Detached,
    ) -> Self {
        let platform = Arc::new(System::new(reaper.clone()));
        Self::with_platform(namespace, reaper, events, exit, detached, platform)
    }

    /// The task service on `platform`.
    pub fn with_platform(
        namespace: String,
        reaper: Reaper,
        events: EventSink,
        exit: Arc<ExitSignal>,
        detached: Detached,
        platform: Arc<dyn Platform>,
    ) -> Self {
        TaskService {
            inner: Arc::new(Inner {
                namespace,
                registry: Registry::default(),
                oom_ledgers: Default::default(),
                reaper,
                events,
                exit,
                detached,
                platform,
            }),
        }
    }

    fn container(&self, id: &str) -> Result<Shared> {
        self.inner.registry.get(id)
    }

    /// Waits for detached work of a previous container on the same id,
    /// bundle or snapshot: the new one must neither collide with nor be
    /// undone by that cleanup.
    async fn wait_work_free(&self, id: &str, keys: &[WorkKey]) {
        let started = Instant::now();
        if !self.inner.detached.wait_free(keys, WORK_WAIT).await {
            warn!(id, waited = ?started.elapsed(), "cleanup of a previous container on the same id or rootfs is still running; going on");
        } else if started.elapsed() > Duration::from_millis(100) {
            info!(id, waited = ?started.elapsed(), "waited for the cleanup of a previous container");
        }
    }
}

fn timestamp(at: SystemTime) -> MessageField<Timestamp> {
    MessageField::some(containerd_shim::util::convert_to_timestamp(Some(at.into())))
}

/// Logs the latency of a call that containerd's CRI makes under its locks.
struct Timed(&'static str, Instant, String);

impl Timed {
    fn new(call: &'static str, id: &str) -> Self {
        Timed(call, Instant::now(), id.to_string())
    }
}

/// Task calls slower than this are logged as warnings: containerd may hold
/// a lock of CRI's while it waits for one (an Update holds the container's
/// status lock), and the shim's own time is what tells whose stall it was.
const SLOW_TASK_CALL: Duration = Duration::from_millis(100);

impl Drop for Timed {
    fn drop(&mut self) {
        let took = self.1.elapsed();
        if took > SLOW_TASK_CALL {
            warn!(call = self.0, id = %self.2, ?took, "slow task call");
        } else {
            debug!(call = self.0, id = %self.2, ?took, "task call");
        }
    }
}
