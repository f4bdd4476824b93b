//! Pause (freeze) and resume (thaw) every process of a container, one at a
//! time: the init's state follows only what runc did.

use containerd_shim_protos::{
    events::task::{TaskPaused, TaskResumed},
    topics,
};

use super::{runc_call::CallInFlight, TaskService};
use crate::{container, error::Result};

impl TaskService {
    pub(super) async fn set_frozen(&self, id: &str, frozen: bool) -> Result<()> {
        let c = self.container(id)?;
        let (runc, call) = {
            let mut g = container::lock(&c);
            g.begin_freeze(frozen)?;
            match CallInFlight::begin(&c, &mut g) {
                Ok(call) => (g.runc.clone(), call),
                Err(e) => {
                    g.end_freeze(frozen, false)?;
                    return Err(e);
                }
            }
        };
        let owned_id = id.to_string();
        let done = self
            .runc_until_exit(call, id, async move {
                if frozen {
                    runc.pause(&owned_id).await
                } else {
                    runc.resume(&owned_id).await
                }
            })
            .await
            .and_then(|o| o.or_exiting(id));
        container::lock(&c).end_freeze(frozen, done.is_ok())?;
        done?;
        let container_id = id.to_string();
        if frozen {
            let paused = TaskPaused {
                container_id,
                ..Default::default()
            };
            self.inner
                .events
                .send(topics::TASK_PAUSED_EVENT_TOPIC, paused);
        } else {
            let resumed = TaskResumed {
                container_id,
                ..Default::default()
            };
            self.inner
                .events
                .send(topics::TASK_RESUMED_EVENT_TOPIC, resumed);
        }
        Ok(())
    }
}
