//! The pod's containers, the ids whose Create is running, the calls that
//! talk to runc, and the shim's exit once nothing is left.
//!
//! One mutex guards all of it, so "is anything left?" and "close the shim"
//! are one step: a Create reserves its id under the same lock, and once the
//! registry is closed every later Create is refused instead of being cut
//! off half-done when the shim exits.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::{TaskService, WORK_WAIT};
use crate::{
    container::Shared,
    error::{Result, ShimError},
};

/// How long a shim told to shut down waits for calls still running and
/// Creates still reserving before it decides.
const QUIET_WAIT: Duration = Duration::from_secs(10);

#[derive(Default)]
struct State {
    containers: HashMap<String, Shared>,
    /// Ids whose Create is running.
    reserved: HashSet<String>,
    /// Reserved ids a Delete came for: their Create undoes its work
    /// instead of registering the container.
    cancelled: HashSet<String>,
    /// Calls that talk to runc, running now.
    busy: usize,
    /// The shim is exiting: nothing new is accepted.
    closed: bool,
}

#[derive(Default)]
pub struct Registry {
    state: Mutex<State>,
    /// Bumped whenever a reservation, a busy call or a container goes.
    changed: watch::Sender<()>,
}

/// An id claimed by a running Create; released when dropped, whether the
/// Create registered its container or failed.
pub struct Reservation<'a> {
    registry: &'a Registry,
    id: String,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let mut s = self.registry.lock();
        s.reserved.remove(&self.id);
        s.cancelled.remove(&self.id);
        drop(s);
        self.registry.changed.send_replace(());
    }
}

/// A call that talks to runc; the shim does not exit under it (containerd
/// would see the connection close mid-call).
pub struct Busy(Arc<super::Inner>);

impl Drop for Busy {
    fn drop(&mut self) {
        let r = &self.0.registry;
        r.lock().busy -= 1;
        r.changed.send_replace(());
    }
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Claims `id` for a Create until it returns, so two Creates of one id
    /// cannot both reach runc (the loser's cleanup would kill the winner).
    pub fn reserve(&self, id: &str) -> Result<Reservation<'_>> {
        let mut s = self.lock();
        if s.closed {
            return Err(ShimError::ShuttingDown);
        }
        if s.containers.contains_key(id) || !s.reserved.insert(id.to_string()) {
            return Err(ShimError::AlreadyExists(format!("container {id}")));
        }
        Ok(Reservation {
            registry: self,
            id: id.to_string(),
        })
    }

    /// Registers the container `make` builds for a reserved id, unless a
    /// Delete cancelled the Create meanwhile: then `make` is not called and
    /// the reservation comes back, to be held until the Create's work is
    /// undone (the Delete waits for it). The check and the insert are one
    /// step, so a Delete either finds the container or cancels its Create.
    pub fn insert<'a>(
        &'a self,
        reservation: Reservation<'a>,
        make: impl FnOnce() -> Shared,
    ) -> std::result::Result<Shared, Reservation<'a>> {
        let mut s = self.lock();
        if s.cancelled.contains(&reservation.id) {
            return Err(reservation);
        }
        let container = make();
        s.containers
            .insert(reservation.id.clone(), container.clone());
        drop(s);
        drop(reservation);
        Ok(container)
    }

    /// For a Delete of `id` whose container is not registered: cancels the
    /// Create of `id` if one is running. True when it did.
    pub fn cancel_create(&self, id: &str) -> bool {
        let mut s = self.lock();
        if s.containers.contains_key(id) || !s.reserved.contains(id) {
            return false;
        }
        s.cancelled.insert(id.to_string());
        true
    }

    /// Waits until no Create of `id` runs, or `bound` passes. True when
    /// none runs.
    pub async fn wait_create_ended(&self, id: &str, bound: Duration) -> bool {
        self.wait_for(bound, |s| !s.reserved.contains(id)).await
    }

    pub fn get(&self, id: &str) -> Result<Shared> {
        self.lock()
            .containers
            .get(id)
            .cloned()
            .ok_or_else(|| ShimError::ContainerNotFound(id.to_string()))
    }

    pub fn remove(&self, id: &str) {
        self.lock().containers.remove(id);
        self.changed.send_replace(());
    }

    pub fn len(&self) -> usize {
        self.lock().containers.len()
    }

    /// Waits until no call is busy and no Create runs, or `bound` passes.
    async fn wait_quiet(&self, bound: Duration) {
        self.wait_for(bound, |s| s.busy == 0 && s.reserved.is_empty())
            .await;
    }

    /// Waits until `done` holds of the registry, or `bound` passes. True
    /// when it holds. The check and the subscription are made under the
    /// lock, so a change between them is not missed.
    async fn wait_for(&self, bound: Duration, done: impl Fn(&State) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + bound;
        loop {
            let mut changed = {
                let s = self.lock();
                if done(&s) {
                    return true;
                }
                self.changed.subscribe()
            };
            if tokio::time::timeout_at(deadline, changed.changed())
                .await
                .is_err()
            {
                return done(&self.lock());
            }
        }
    }

    /// Closes the registry if no container is in it or reserved. True when
    /// closed: the shim may exit.
    fn close_if_empty(&self) -> bool {
        let mut s = self.lock();
        if s.containers.is_empty() && s.reserved.is_empty() {
            s.closed = true;
        }
        s.closed
    }
}

impl TaskService {
    /// Marks a call that talks to runc as running.
    pub(super) fn busy(&self) -> Busy {
        self.inner.registry.lock().busy += 1;
        Busy(self.inner.clone())
    }

    /// Shutdown: containerd asks the shim to exit once it has no task left.
    /// The shim exits once pending unmounts and running calls are done, and
    /// only if no new container arrived meanwhile: the socket stays served
    /// until then, so a new task of this pod may still land here.
    pub(super) fn shutdown(&self) {
        let remaining = self.inner.registry.len();
        if remaining > 0 {
            debug!(remaining, "shutdown ignored while containers remain");
            return;
        }
        let inner = self.inner.clone();
        tokio::spawn(async move {
            if inner.detached.wait_idle(WORK_WAIT).await > 0 {
                warn!("exiting with detached cleanup still running; containerd's cleanup unmounts the rootfs");
            }
            inner.registry.wait_quiet(QUIET_WAIT).await;
            if inner.registry.close_if_empty() {
                info!("no containers left, shim exits");
                inner.exit.signal();
            } else {
                info!("a new container arrived while shutting down; shim stays");
            }
        });
    }
}
