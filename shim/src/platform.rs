//! What the task service asks of the machine, behind one trait: a runc for
//! a container's settings, and the mount and unmount of a rootfs. [`System`]
//! is the real machine; the unit tests of the task service put a fake in its
//! place, so that they run without root, runc or mounts.

use std::{path::Path, sync::Arc, time::Duration};

use containerd_shim_protos::api::Mount;
use runc_wrapper::{Runc, RuncApi};

use crate::{
    config::RuntimeConfig, error::Result, exited_teardown::Teardown, reaper::Reaper, rootfs,
    unmount,
};

pub trait Platform: Send + Sync {
    /// The runc that runs a container with these settings.
    fn runc(&self, cfg: &RuntimeConfig) -> Arc<dyn RuncApi>;
    /// Mounts `mounts` in order on `target`; on failure nothing of them
    /// stays mounted. Blocking.
    fn mount(&self, mounts: &[Mount], target: &Path) -> Result<()>;
    /// Unmounts everything on `target`; nothing mounted there is success.
    /// Blocking; the real one runs the unmount in a child process.
    fn unmount(&self, target: &Path) -> Result<Duration>;
    /// Tears down container `id`, whose processes have all exited, without
    /// runc (`exited_teardown`). False leaves it to `runc delete`. Blocking.
    fn teardown(&self, id: &str, teardown: &Teardown) -> bool;
}

/// The machine the shim runs on: the runc binary (whose exits come from the
/// shim's reaper) and the kernel's mounts.
pub struct System {
    reaper: Reaper,
}

impl System {
    pub fn new(reaper: Reaper) -> Self {
        System { reaper }
    }
}

impl Platform for System {
    fn runc(&self, cfg: &RuntimeConfig) -> Arc<dyn RuncApi> {
        Arc::new(
            Runc::new(
                &cfg.runc_binary,
                &cfg.runc_root,
                Arc::new(self.reaper.clone()),
            )
            .with_systemd_cgroup(cfg.systemd_cgroup)
            .with_timeout(Duration::from_secs(cfg.runc_timeout_secs)),
        )
    }

    fn mount(&self, mounts: &[Mount], target: &Path) -> Result<()> {
        rootfs::mount_all(mounts, target)
    }

    fn unmount(&self, target: &Path) -> Result<Duration> {
        unmount::unmount_all_in_child(target, &self.reaper)
    }

    fn teardown(&self, _id: &str, teardown: &Teardown) -> bool {
        teardown.run()
    }
}
