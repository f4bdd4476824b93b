//! Start of a container's init: `runc start` lets the init that `runc
//! create` left blocked run. An exit the reaper sees while runc start runs
//! is held back until the TaskStart is out, so containerd sees them in order.

use containerd_shim_protos::{events::task::TaskStart, topics};

use super::TaskService;
use crate::{container, error::Result};

impl TaskService {
    pub(super) async fn start_init(&self, id: &str) -> Result<i32> {
        let c = self.container(id)?;
        let (runc, pid) = {
            let mut g = container::lock(&c);
            g.begin_start()?;
            (g.runc.clone(), g.init.pid)
        };
        let started = runc.start(id).await;
        let mut g = container::lock(&c);
        g.end_start(started.is_ok())?;
        if started.is_ok() {
            self.inner.events.send(
                topics::TASK_START_EVENT_TOPIC,
                TaskStart {
                    container_id: id.to_string(),
                    pid: pid as u32,
                    ..Default::default()
                },
            );
        }
        self.publish(&c, &mut g);
        drop(g);
        started?;
        Ok(pid)
    }
}
