//! Kill: a signal to a container's init (through `runc kill`, which with
//! `all` reaches every process of the container) or to one exec.

use runc_wrapper::RuncApi;
use tracing::info;

use super::{runc_call::CallInFlight, TaskService};
use crate::{
    container,
    error::{Result, ShimError},
};

impl TaskService {
    pub(super) async fn kill(&self, id: &str, exec_id: &str, signal: u32, all: bool) -> Result<()> {
        let c = self.container(id)?;
        let (runc, pid, call) = {
            let mut g = container::lock(&c);
            let p = g.process(exec_id)?;
            if !p.state.is_alive() {
                return Err(ShimError::Exiting(format!(
                    "{id}: process already finished"
                )));
            }
            let pid = p.pid;
            let call = if exec_id.is_empty() {
                Some(CallInFlight::begin(&c, &mut g)?)
            } else {
                None
            };
            (g.runc.clone(), pid, call)
        };
        info!(id, exec_id, signal, all, "kill");
        if let Some(call) = call {
            // An exit while runc runs answers the Kill: the signal landed,
            // or is moot.
            let owned = id.to_string();
            self.runc_until_exit(call, id, async move {
                RuncApi::kill(&*runc, &owned, signal, all).await
            })
            .await?;
        } else if pid > 0 {
            // An exec is the shim's child until reaped, so its pid cannot be reused.
            let sig = nix::sys::signal::Signal::try_from(signal as i32)
                .map_err(|_| ShimError::InvalidArgument(format!("invalid signal {signal}")))?;
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig)
                .map_err(|e| ShimError::io(format!("kill exec {exec_id}"), e.into()))?;
        }
        Ok(())
    }
}
