//! Calls that read what the shim knows, or the container's cgroup: State,
//! Wait, Pids, Stats, Connect, and the stdio calls ResizePty and CloseIO.
//! State and Wait never call runc, so they answer at once whatever runc or
//! an unmount is doing.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use containerd_shim_protos::{api, protobuf::MessageField};

use tracing::warn;

use super::{runc_call::CallInFlight, runc_call::Outcome, timestamp, TaskService};
use crate::{
    cgroup, container,
    error::{Result, ShimError},
    process_state::ExitInfo,
    stdio,
};

/// How long Wait waits for containerd to take the events queued before
/// the exit it answers.
const EVENTS_BEFORE_WAIT: Duration = Duration::from_secs(2);

impl TaskService {
    pub(super) fn state(&self, id: &str, exec_id: &str) -> Result<api::StateResponse> {
        let c = self.container(id)?;
        let g = container::lock(&c);
        let p = g.process(exec_id)?;
        let mut resp = api::StateResponse {
            id: if exec_id.is_empty() {
                g.id.clone()
            } else {
                exec_id.to_string()
            },
            bundle: g.bundle.display().to_string(),
            pid: p.pid as u32,
            stdin: p.stdio.stdin.clone(),
            stdout: p.stdio.stdout.clone(),
            stderr: p.stdio.stderr.clone(),
            terminal: p.stdio.terminal,
            exec_id: exec_id.to_string(),
            ..Default::default()
        };
        resp.status = p.state.status().into();
        if matches!(p.state, crate::process_state::ProcessState::Exiting(_)) {
            crate::metrics::answered_from_exiting();
        }
        if let Some(exit) = p.state.exit() {
            resp.exit_status = exit.status;
            resp.exited_at = timestamp(exit.at);
        }
        Ok(resp)
    }

    /// Answers once the process's exit is told, and once containerd has
    /// taken the events queued before it. containerd's CRI records a
    /// container's exit from this answer and its OOM kill from the TaskOOM
    /// event, in two goroutines: answered while the TaskOOM still waits to
    /// reach containerd (its connection being remade after a restart), the
    /// exit is recorded as "Error", and a client that reads that status
    /// and removes the container never sees OOMKilled. Bounded: containerd
    /// asking for the exit takes events too, unless it is in trouble.
    pub(super) async fn wait(&self, id: &str, exec_id: &str) -> Result<ExitInfo> {
        let c = self.container(id)?;
        let mut rx = container::lock(&c).process(exec_id)?.subscribe_told();
        let gone = || ShimError::Other(format!("{id}: process gone without exit"));
        let exit = *rx.wait_for(Option::is_some).await.map_err(|_| gone())?;
        let exit = exit.ok_or_else(gone)?;
        // The exit is told under the container's lock, with its TaskExit
        // and the TaskOOM before it queued in the same critical section:
        // once the lock is free, they are in the queue.
        drop(container::lock(&c));
        let started = Instant::now();
        if !self.inner.events.flushed(EVENTS_BEFORE_WAIT).await {
            warn!(id, exec_id, waited = ?started.elapsed(), "containerd has not taken the events before the exit; answering Wait anyway");
        }
        Ok(exit)
    }

    /// The container's processes (`runc ps`), or, once its init has exited
    /// and until Delete, the init alone. An exited task must not look
    /// empty: containerd 1.7 and later, when they start again, take a task
    /// (not a sandbox) without processes for a shim leaked before its task
    /// was created and delete it without telling CRI, which then records
    /// exit 255 "Unknown" for a container that exited while containerd was
    /// down. The stock shim's `runc ps` answers empty there and loses it.
    pub(super) async fn pids(&self, id: &str) -> Result<api::PidsResponse> {
        let c = self.container(id)?;
        let (runc, execs, call) = {
            let mut g = container::lock(&c);
            if !g.init.state.is_alive() {
                crate::metrics::answered_from_exiting();
                return Ok(exited_init(g.init.pid));
            }
            let execs: HashMap<i32, String> =
                g.execs.values().map(|p| (p.pid, p.id.clone())).collect();
            let call = CallInFlight::begin(&c, &mut g)?;
            (g.runc.clone(), execs, call)
        };
        let owned = id.to_string();
        let pids = match self
            .runc_until_exit(call, id, async move { runc.ps(&owned).await })
            .await
        {
            Ok(Outcome::Done(pids)) => pids,
            // It exited while runc looked: as for an exited task.
            Ok(Outcome::Exited) | Err(ShimError::Exiting(_)) => {
                crate::metrics::answered_from_exiting();
                return Ok(exited_init(container::lock(&c).init.pid));
            }
            Err(other) => return Err(other),
        };
        let processes = pids
            .into_iter()
            .map(|pid| {
                let mut info = api::ProcessInfo {
                    pid: pid as u32,
                    ..Default::default()
                };
                if let Some(exec_id) = execs.get(&pid) {
                    let details = containerd_shim_protos::shim::oci::ProcessDetails {
                        exec_id: exec_id.clone(),
                        ..Default::default()
                    };
                    if let Ok(any) = containerd_shim::util::convert_to_any(Box::new(details)) {
                        info.info = MessageField::some(any);
                    }
                }
                info
            })
            .collect();
        Ok(api::PidsResponse {
            processes,
            ..Default::default()
        })
    }

    pub(super) async fn stats(&self, id: &str) -> Result<api::StatsResponse> {
        let c = self.container(id)?;
        let (pid, cg, call) = {
            let mut g = container::lock(&c);
            let call = CallInFlight::begin(&c, &mut g)?;
            (g.init.pid, g.cgroup.clone(), call)
        };
        let stats = tokio::task::spawn_blocking(move || cgroup::metrics(cg.as_ref(), pid as u32))
            .await
            .map_err(|e| ShimError::Other(format!("stats task: {e}")))??;
        drop(call);
        Ok(api::StatsResponse {
            stats: MessageField::some(stats),
            ..Default::default()
        })
    }

    pub(super) fn connect(&self, id: &str) -> api::ConnectResponse {
        let task_pid = self
            .container(id)
            .map(|c| container::lock(&c).init.pid)
            .unwrap_or(0);
        api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid: task_pid as u32,
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        }
    }

    pub(super) fn resize_pty(&self, req: &api::ResizePtyRequest) -> Result<()> {
        let c = self.container(&req.id)?;
        let console = {
            let g = container::lock(&c);
            let p = g.process(&req.exec_id)?;
            p.console
                .as_ref()
                .map(|f| f.try_clone())
                .transpose()
                .map_err(|e| ShimError::io("dup pty master", e))?
        };
        match console {
            Some(f) => stdio::resize(&f, req.width, req.height),
            None => {
                tracing::debug!(id = req.id, "resize of a process without terminal");
                Ok(())
            }
        }
    }

    pub(super) fn close_io(&self, id: &str, exec_id: &str) -> Result<()> {
        let c = self.container(id)?;
        let mut g = container::lock(&c);
        g.process_mut(exec_id)?.held.close_stdin();
        Ok(())
    }
}

/// Pids of a container whose init has exited: the init alone.
fn exited_init(pid: i32) -> api::PidsResponse {
    api::PidsResponse {
        processes: vec![api::ProcessInfo {
            pid: pid as u32,
            ..Default::default()
        }],
        ..Default::default()
    }
}
