//! Delete of an exec, or of a container: wait for the calls still owed an
//! answer, make sure runc's state is gone (the early `runc delete` started
//! at the exit, or one now), hand the rootfs to the detached unmount worker
//! (Delete does not wait for it), and leave the registry. A Delete of an
//! id whose Create still runs cancels that Create (see
//! `delete_during_create`).

use std::time::{Duration, Instant};

use containerd_shim_protos::{api::DeleteResponse, events::task::TaskDelete, topics};
use tracing::{debug, info};

use super::{runc_call::runc_delete_or_force, timestamp, TaskService, WORK_WAIT};
use crate::{
    container::{self, wait_until, Shared},
    container_state::{DeletePlan, Phase, RuncCleanup, RuncState},
    detached::WorkKey,
    error::{Result, ShimError},
    process_state::ExitInfo,
    rootfs,
};

/// The longest Delete waits for the early `runc delete` (which may force
/// after a first failure, each call within the runc timeout).
const EARLY_DELETE_WAIT: Duration = Duration::from_secs(600);

impl TaskService {
    pub(super) async fn delete(&self, id: &str, exec_id: &str) -> Result<DeleteResponse> {
        if exec_id.is_empty() && self.inner.registry.cancel_create(id) {
            return Ok(self.delete_during_create(id).await);
        }
        let c = self.container(id)?;
        if !exec_id.is_empty() {
            let (pid, exit) = container::lock(&c).delete_exec(exec_id)?;
            return Ok(delete_response(pid, exit));
        }
        // The init's TaskExit goes out before its TaskDelete: an exit still
        // withheld (an exec still runs) is waited for.
        let told = wait_until(&c, WORK_WAIT, |g| {
            (!matches!(g.life.phase(), Phase::Exited { .. })).then_some(())
        })
        .await;
        if told.is_none() {
            info!(
                id,
                "delete refused: the exit is still withheld by running execs"
            );
        }
        let plan = container::lock(&c).begin_delete()?;
        info!(id, "deleting container");
        match self.finish_delete(&c, id, &plan).await {
            Ok(()) => {}
            Err(e) => {
                // Nothing committed: a retry finds the container as it was.
                let mut g = container::lock(&c);
                g.abort_delete();
                self.publish(&c, &mut g);
                return Err(e);
            }
        }
        let rootfs = container::lock(&c).commit_delete()?;
        if let Some(r) = rootfs {
            rootfs::unmount_detached(
                &self.inner.detached,
                self.inner.platform.clone(),
                id.to_string(),
                r,
            );
        }
        self.inner.registry.remove(id);
        self.inner.events.send(
            topics::TASK_DELETE_EVENT_TOPIC,
            TaskDelete {
                container_id: id.to_string(),
                id: id.to_string(),
                pid: plan.pid as u32,
                exit_status: plan.exit.status,
                exited_at: timestamp(plan.exit.at),
                ..Default::default()
            },
        );
        info!(id, status = plan.exit.status, "container deleted");
        Ok(delete_response(plan.pid, plan.exit))
    }

    /// A Delete of an id whose Create is still running: containerd gave up
    /// on that Create (its caller went away, a restart) and deletes the id
    /// before it forgets the task. The Create, cancelled, undoes its work
    /// instead of registering a container nobody would delete; the answer
    /// waits for that, so containerd removes the bundle after runc's state
    /// is gone. Past the bound the Create still undoes itself.
    async fn delete_during_create(&self, id: &str) -> DeleteResponse {
        let waited = Instant::now();
        let ended = self.inner.registry.wait_create_ended(id, WORK_WAIT).await;
        info!(id, waited = ?waited.elapsed(), ended, "delete during create: the create is cancelled");
        delete_response(0, ExitInfo::now())
    }

    /// What Delete must see done before it commits: the calls in flight
    /// answered, runc's state gone.
    async fn finish_delete(&self, c: &Shared, id: &str, plan: &DeletePlan) -> Result<()> {
        let waited = Instant::now();
        if wait_until(c, WORK_WAIT, |g| (g.life.calls() == 0).then_some(()))
            .await
            .is_none()
        {
            info!(id, "delete goes on with calls still in flight");
        }
        if waited.elapsed() > Duration::from_millis(100) {
            info!(id, waited = ?waited.elapsed(), "delete waited for calls in flight on the container");
        }
        match plan.runc {
            RuncCleanup::AwaitEarly => {
                let waited = Instant::now();
                // Bounded anyway: each runc call it makes has its timeout.
                let outcome = wait_until(c, EARLY_DELETE_WAIT, |g| match g.life.runc() {
                    RuncState::Removing => None,
                    other => Some(other),
                })
                .await;
                debug!(id, waited = ?waited.elapsed(), "delete waited for the runc delete started at the exit");
                if outcome == Some(RuncState::Gone) {
                    return Ok(());
                }
                // A hung runc may have passed by now: once more, Delete's own.
                if outcome == Some(RuncState::Failed) && container::lock(c).retry_runc_removal() {
                    info!(
                        id,
                        "the runc delete started at the exit failed; delete tries again"
                    );
                    let runc = container::lock(c).runc.clone();
                    let done = runc_delete_or_force(&*runc, id, false).await;
                    container::lock(c).runc_removed(done.is_ok());
                    return done.map_err(Into::into);
                }
                return Err(ShimError::Other(format!(
                    "runc delete of {id} failed; see the shim log"
                )));
            }
            RuncCleanup::Delete { force } => {
                // Not beside a runc call still running detached.
                self.wait_work_free(id, &[WorkKey::RuncCall(id.to_string())])
                    .await;
                let runc = container::lock(c).runc.clone();
                let done = runc_delete_or_force(&*runc, id, force).await;
                container::lock(c).runc_removed(done.is_ok());
                done?;
            }
        }
        Ok(())
    }
}

fn delete_response(pid: i32, exit: ExitInfo) -> DeleteResponse {
    DeleteResponse {
        pid: pid as u32,
        exit_status: exit.status,
        exited_at: timestamp(exit.at),
        ..Default::default()
    }
}
