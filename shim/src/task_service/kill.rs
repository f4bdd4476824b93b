//! Kill: a signal to a container's init or to one exec.
//!
//! The init is signalled through its pidfd where that does what `runc kill`
//! would: one process, in its own pid namespace, not frozen. That saves a
//! runc process (about 10 ms of fork, exec and Go start-up) on every
//! StopContainer and StopPodSandbox. `runc kill` stays for the rest: `all`
//! (every process of the cgroup), a shared pid namespace (runc kills the
//! whole cgroup on SIGKILL there, since the init's death takes nobody with
//! it) and a paused container (runc thaws it after a SIGKILL, without
//! which a cgroup v1 frozen task never dies).

use runc_wrapper::RuncApi;
use tracing::{debug, info};

use super::{runc_call::CallInFlight, TaskService};
use crate::{
    container::{self, Container},
    error::{Result, ShimError},
    process_handle::{Delivery, ProcessHandle},
    process_state::ProcessState,
};

impl TaskService {
    pub(super) async fn kill(&self, id: &str, exec_id: &str, signal: u32, all: bool) -> Result<()> {
        let c = self.container(id)?;
        info!(id, exec_id, signal, all, "kill");
        check_signal(signal)?;
        if !exec_id.is_empty() {
            return signal_exec(&container::lock(&c), exec_id, signal);
        }
        let (runc, call) = {
            let mut g = container::lock(&c);
            if !g.init.state.is_alive() {
                return Err(ShimError::Exiting(format!(
                    "{id}: process already finished"
                )));
            }
            if let Some(handle) = direct_signal_target(&g, all) {
                return signal_through(handle, &g.id, "", signal);
            }
            let call = CallInFlight::begin(&c, &mut g)?;
            (g.runc.clone(), call)
        };
        // An exit while runc runs answers the Kill: the signal landed, or
        // is moot.
        let owned = id.to_string();
        self.runc_until_exit(call, id, async move {
            RuncApi::kill(&*runc, &owned, signal, all).await
        })
        .await?;
        Ok(())
    }
}

/// The highest signal number of Linux (`_NSIG`); 0 only checks that the
/// process exists, as with kill(2).
const MAX_SIGNAL: u32 = 64;

/// Refuses a signal no kernel has, before the Kill picks its way: the
/// pidfd and `runc kill` would fail it with different words, and an
/// operator should read the caller's mistake, not a runc failure.
fn check_signal(signal: u32) -> Result<()> {
    if signal > MAX_SIGNAL {
        return Err(ShimError::InvalidArgument(format!(
            "invalid signal {signal}: Linux signals are 1 to {MAX_SIGNAL}"
        )));
    }
    Ok(())
}

/// Signals an exec through its pidfd, so that the signal reaches that
/// process or nobody, never one that took its pid after it was reaped.
fn signal_exec(g: &Container, exec_id: &str, signal: u32) -> Result<()> {
    let p = g.process(exec_id)?;
    if !p.state.is_alive() {
        return Err(ShimError::Exiting(format!(
            "{}: process already finished",
            g.id
        )));
    }
    if p.pid == 0 {
        // Added but never started: nothing to signal (as the stock shim).
        return Err(ShimError::InvalidState {
            what: exec_id.to_string(),
            action: "kill",
            state: "not started",
        });
    }
    let Some(handle) = &p.handle else {
        // Gone before its handle was opened: its exit is on its way.
        debug!(id = g.id, exec_id, "kill of an exec that exited already");
        return Ok(());
    };
    signal_through(handle, &g.id, exec_id, signal)
}

/// The init's pidfd, when a signal through it is all `runc kill` would do
/// (see the module's doc). None sends the Kill to runc.
fn direct_signal_target(g: &Container, all: bool) -> Option<&ProcessHandle> {
    let plain = !all && !g.shares_pid_ns && g.init.state != ProcessState::Paused;
    g.init.handle.as_ref().filter(|_| plain)
}

/// Signals one process through its pidfd. A process that is gone (its exit
/// is on its way) counts as signalled, as a kill that crossed the exit.
fn signal_through(handle: &ProcessHandle, id: &str, exec_id: &str, signal: u32) -> Result<()> {
    let delivery = handle.signal(signal as i32).map_err(|e| match e.kind() {
        std::io::ErrorKind::InvalidInput => {
            ShimError::InvalidArgument(format!("invalid signal {signal}"))
        }
        _ => ShimError::io(format!("kill {id} {exec_id}"), e),
    })?;
    match delivery {
        Delivery::Delivered => debug!(id, exec_id, signal, "signalled through the pidfd"),
        Delivery::Gone => debug!(id, exec_id, "kill of a process that exited already"),
    }
    Ok(())
}
