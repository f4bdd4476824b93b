//! runc calls on a live container: counted as calls in flight (Delete waits
//! for them), bounded by the runc wrapper's timeout, and answered at the
//! container's exit when that comes first.

use std::future::Future;

use runc_wrapper::{RuncApi, RuncError};
use tracing::{debug, warn};

use super::TaskService;
use crate::{
    container::{self, wait_until, Container, Shared},
    detached::WorkKey,
    error::{Result, ShimError},
};

/// As long as runc runs: its own timeout bounds the call.
const NO_BOUND: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// A call on a container that has not answered yet (see
/// `Container::begin_call`); dropping it ends the call.
pub(super) struct CallInFlight(Shared);

impl CallInFlight {
    /// Begins a call on the locked container `g` (of `c`); fails with
    /// "exiting" when the init is not alive or a Delete runs.
    pub(super) fn begin(c: &Shared, g: &mut Container) -> Result<Self> {
        g.begin_call()?;
        Ok(CallInFlight(c.clone()))
    }
}

impl Drop for CallInFlight {
    fn drop(&mut self) {
        container::lock(&self.0).end_call();
    }
}

/// How a runc call on a live container ended.
pub(super) enum Outcome<T> {
    /// runc answered first.
    Done(T),
    /// The container's init exited first; runc goes on detached.
    Exited,
}

impl<T> Outcome<T> {
    /// runc's answer, or "exiting" for a container that exited meanwhile.
    pub(super) fn or_exiting(self, id: &str) -> Result<T> {
        match self {
            Outcome::Done(v) => Ok(v),
            Outcome::Exited => Err(ShimError::Exiting(id.to_string())),
        }
    }
}

impl TaskService {
    /// Runs a runc call on a live container and answers as soon as runc is
    /// done or the container's init exits, whichever comes first. After the
    /// exit the answer is known without runc: the task is exiting. Waiting
    /// for runc instead would hold up Delete, which waits for every call in
    /// flight, and with it containerd's exit handling, behind a runc that
    /// may be slow or hung. runc then goes on detached, counted as work on
    /// the container id so that the shim does not exit under it.
    ///
    /// `call` is begun by the caller (with its own checks, under the same
    /// lock), so that nothing can come between the check and the count.
    pub(super) async fn runc_until_exit<T, F>(
        &self,
        call: CallInFlight,
        id: &str,
        runc: F,
    ) -> Result<Outcome<T>>
    where
        T: Send + 'static,
        F: Future<Output = std::result::Result<T, RuncError>> + Send + 'static,
    {
        let c = call.0.clone();
        let exited = wait_until(&c, NO_BOUND, |g| (!g.init.state.is_alive()).then_some(()));
        let job = self
            .inner
            .detached
            .begin(vec![WorkKey::RuncCall(id.to_string())]);
        let mut running = tokio::spawn(async move {
            let _job = job;
            runc.await
        });
        let outcome = tokio::select! {
            biased;
            joined = &mut running => match joined {
                Ok(Ok(v)) => Ok(Outcome::Done(v)),
                Ok(Err(e)) => Err(runc_failed(&c, id, e)),
                Err(e) => Err(ShimError::Other(format!("runc call on {id}: {e}"))),
            },
            Some(()) = exited => {
                debug!(id, "container exited while runc ran; answering without waiting for runc");
                Ok(Outcome::Exited)
            }
        };
        drop(call);
        outcome
    }
}

/// A runc call on a container failed. If the container exited while runc
/// ran, that is the answer: the task is exiting (NotFound), never an unknown
/// error that CRI would turn into an Unknown container.
fn runc_failed(c: &Shared, id: &str, err: RuncError) -> ShimError {
    let exited = !container::lock(c).init.state.is_alive() || err.is_not_running();
    if exited {
        debug!(id, error = %err, "runc call raced with the container's exit");
        ShimError::Exiting(id.to_string())
    } else {
        ShimError::Runc(err)
    }
}

/// `runc delete` (forced when `force`), then `runc delete --force` when that
/// failed for another reason than the state being gone already.
pub(super) async fn runc_delete_or_force(
    runc: &dyn RuncApi,
    id: &str,
    force: bool,
) -> std::result::Result<(), RuncError> {
    match runc.delete(id, force).await {
        Ok(()) => Ok(()),
        Err(e) if e.is_not_found() => {
            debug!(id, "runc state already gone");
            Ok(())
        }
        Err(e) => {
            warn!(id, error = %e, "runc delete failed, forcing");
            match runc.delete(id, true).await {
                Err(e) if e.is_not_found() => Ok(()),
                other => other,
            }
        }
    }
}
