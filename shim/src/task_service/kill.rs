//! Kill: a signal to a container's init (through `runc kill`, which with
//! `all` reaches every process of the container) or to one exec.

use runc_wrapper::RuncApi;
use tracing::{debug, info};

use super::{runc_call::CallInFlight, TaskService};
use crate::{
    container::{self, Container},
    error::{Result, ShimError},
    process_handle::Delivery,
};

impl TaskService {
    pub(super) async fn kill(&self, id: &str, exec_id: &str, signal: u32, all: bool) -> Result<()> {
        let c = self.container(id)?;
        info!(id, exec_id, signal, all, "kill");
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
    match handle.signal(signal as i32).map_err(|e| match e.kind() {
        std::io::ErrorKind::InvalidInput => {
            ShimError::InvalidArgument(format!("invalid signal {signal}"))
        }
        _ => ShimError::io(format!("kill exec {exec_id}"), e),
    })? {
        Delivery::Delivered => {}
        Delivery::Gone => debug!(id = g.id, exec_id, "kill of an exec that exited already"),
    }
    Ok(())
}
