//! The way of an exit, top to bottom: the reaper reports a process's exit
//! (`watch_exit`), the container records it (`on_exit`; in a shared pid
//! namespace the rest of the container is killed, `kill_the_rest`), every
//! exit that may be told now is published as a TaskExit (`publish`), and
//! once the init's exit is out, `runc delete` starts at once
//! (`remove_runc_state`) rather than when containerd's Delete comes, and
//! without runc where the shim can do what it would (`exited_teardown`).

use std::time::Instant;

use containerd_shim_protos::{
    events::task::{TaskExit, TaskOOM},
    topics,
};
use tokio::sync::oneshot;
use tracing::{debug, error, info};

use super::{runc_call::runc_delete_or_force, timestamp, TaskService};
use crate::{
    cgroup::{ContainerCgroup, OomWatch},
    container::{self, Container, Shared},
    detached::WorkKey,
    process_state::ExitInfo,
    reaper::Exit,
};

impl TaskService {
    /// 1. Hands the exit the reaper reports through `rx` (see
    ///    `Reaper::watch`) to the container.
    pub(super) fn watch_exit(&self, c: Shared, exec_id: String, rx: oneshot::Receiver<Exit>) {
        let svc = self.clone();
        tokio::spawn(async move {
            if let Ok(exit) = rx.await {
                svc.on_exit(&c, &exec_id, exit);
            }
        });
    }

    /// 2. Records the exit. From here on State answers STOPPED with the
    ///    exit status, and calls that need a live process answer "exiting".
    fn on_exit(&self, c: &Shared, exec_id: &str, exit: Exit) {
        let info = ExitInfo {
            status: exit.status as u32,
            at: exit.at,
        };
        let mut g = container::lock(c);
        if let Err(e) = g.exited(exec_id, info) {
            debug!(id = g.id, exec_id, error = %e, "exit of a process no longer tracked");
            return;
        }
        info!(
            id = g.id,
            exec_id,
            pid = exit.pid,
            status = exit.status,
            "process exited"
        );
        if exec_id.is_empty() && g.shares_pid_ns && g.has_running_execs() {
            self.kill_the_rest(&g);
        }
        self.publish(c, &mut g);
    }

    /// 2b. In a shared pid namespace nothing ends the container's other
    ///    processes when its init exits, and its TaskExit waits for the
    ///    execs: kill every process of the container now, as the stock
    ///    shim does (`runc kill --all`, by cgroup), so that the exit is
    ///    told. Without execs the early `runc delete` kills what is left.
    fn kill_the_rest(&self, g: &Container) {
        let (runc, id) = (g.runc.clone(), g.id.clone());
        let job = self
            .inner
            .detached
            .begin(vec![WorkKey::RuncCall(id.clone())]);
        info!(
            id,
            "init exited in a shared pid namespace; killing the container's other processes"
        );
        tokio::spawn(async move {
            let _job = job;
            if let Err(e) = runc.kill(&id, libc::SIGKILL as u32, true).await {
                error!(id, error = %e, "runc kill --all at the init's exit failed");
            }
        });
    }

    /// 3. Publishes the TaskExit of every process whose exit may be told
    ///    now: an exec's at once; the init's once its TaskStart is out and
    ///    its execs are gone (`Container::take_publishable`). Called with
    ///    the container locked, after each transition that can free an
    ///    exit (an exit, the end of Start), so each exit is told once and
    ///    in order with the events before it.
    pub(super) fn publish(&self, c: &Shared, g: &mut Container) {
        let publication = g.take_publishable();
        // A kill that caused an exit is told before the exit, and while the
        // cgroup still exists (runc delete follows the init's TaskExit).
        if let Some(oom) = &g.oom {
            let init_killed = publication
                .exits
                .iter()
                .any(|e| e.pid == g.init.pid && e.exit.status == 128 + libc::SIGKILL as u32);
            oom.flush(init_killed);
        }
        for e in publication.exits {
            self.inner.events.send(
                topics::TASK_EXIT_EVENT_TOPIC,
                TaskExit {
                    container_id: g.id.clone(),
                    id: e.id,
                    pid: e.pid as u32,
                    exit_status: e.exit.status,
                    exited_at: timestamp(e.exit.at),
                    ..Default::default()
                },
            );
        }
        if publication.remove_runc_state {
            self.remove_runc_state(c.clone(), g);
        }
    }

    /// 4. `runc delete` of a container whose init's exit is published,
    ///    started now rather than when containerd's Delete comes: CRI calls
    ///    Delete on the exit and reports EXITED only once Delete returns, so
    ///    the exit event's way through containerd and runc's tens of
    ///    milliseconds overlap instead of adding up. Nothing runs in the
    ///    container any more: the start and the execs are done (the exit is
    ///    published only then), and for a container sharing a pid namespace
    ///    runc kills what is left, as the stock shim does at the exit.
    ///
    ///    Delete waits for the outcome (`Container::runc_removed`), so that
    ///    containerd keeps the task, and cleans up after the shim itself,
    ///    should the shim die meanwhile. The job keeps the id busy, so a new
    ///    container of that id waits, and the shim waits for it before it
    ///    exits.
    ///
    ///    Where removing the container's cgroups and runc's state directory
    ///    is all `runc delete` would do, the shim does it itself and no runc
    ///    starts (`exited_teardown`); if that stops short, runc finishes.
    fn remove_runc_state(&self, c: Shared, g: &Container) {
        let (runc, id, teardown) = (g.runc.clone(), g.id.clone(), g.teardown.clone());
        let job = self
            .inner
            .detached
            .begin(vec![WorkKey::Container(id.clone())]);
        let svc = self.clone();
        tokio::spawn(async move {
            let _job = job;
            // Not beside a runc call that still runs detached (an update or
            // ps answered at the exit, the kill of what is left).
            svc.wait_work_free(&id, &[WorkKey::RuncCall(id.clone())])
                .await;
            let started = Instant::now();
            let by_shim = match teardown {
                Some(t) => {
                    let (platform, id) = (svc.inner.platform.clone(), id.clone());
                    tokio::task::spawn_blocking(move || platform.teardown(&id, &t))
                        .await
                        .unwrap_or(false)
                }
                None => false,
            };
            let gone = by_shim
                || match runc_delete_or_force(&*runc, &id, false).await {
                    Ok(()) => true,
                    Err(e) => {
                        error!(id, error = %e, "runc delete --force failed");
                        false
                    }
                };
            let by = if by_shim { "shim" } else { "runc" };
            info!(id, took = ?started.elapsed(), gone, by, "runc state removed at the exit");
            container::lock(&c).runc_removed(gone);
        });
    }

    /// OOM kills in the container's cgroup, as TaskOOM events.
    pub(super) fn watch_oom(&self, id: String, cgroup: &ContainerCgroup) -> Option<OomWatch> {
        let events = self.inner.events.clone();
        OomWatch::start(cgroup, &self.inner.oom_ledgers, move || {
            info!(id, "container OOM-killed a process");
            crate::metrics::inc(&crate::metrics::FIGURES.oom_events);
            events.send(
                topics::TASK_OOM_EVENT_TOPIC,
                TaskOOM {
                    container_id: id.clone(),
                    ..Default::default()
                },
            );
        })
    }
}
