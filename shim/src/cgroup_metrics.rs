//! Container metrics for Stats, and OOM notifications, from the container's
//! cgroup (v1 or v2).

use std::{
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
    time::Duration,
};

use cgroups_rs::fs::{hierarchies, Subsystem};
use containerd_shim_protos::{
    cgroups::metrics::Metrics,
    protobuf::{well_known_types::any::Any, Message},
};
use tokio::io::unix::AsyncFd;
use tracing::{debug, info};

use crate::error::{Result, ShimError};

/// The name containerd registers `Metrics` under (its protobuf full name).
const METRICS_TYPE_URL: &str = "io.containerd.cgroups.v1.Metrics";

/// Metrics of the cgroup of `pid`, as containerd's `io.containerd.cgroups.v1.Metrics`.
pub fn collect(pid: u32) -> Result<Any> {
    let cg = containerd_shim::cgroup::get_cgroup(pid)
        .map_err(|e| ShimError::Other(format!("cgroup of pid {pid}: {e}")))?;
    let mut metrics: Metrics = containerd_shim::cgroup::collect_metrics(&cg)
        .map_err(|e| ShimError::Other(format!("cgroup metrics: {e}")))?;
    // On v1 CPU time lives in cpuacct, which the shared collector skips.
    for s in cg.subsystems() {
        if let Subsystem::CpuAcct(acct) = s {
            let a = acct.cpuacct();
            let usage = metrics
                .cpu
                .mut_or_insert_default()
                .usage
                .mut_or_insert_default();
            usage.total = a.usage;
            usage.user = a.usage_user;
            usage.kernel = a.usage_sys;
            usage.per_cpu = a
                .usage_percpu
                .split_whitespace()
                .filter_map(|v| v.parse().ok())
                .collect();
        }
    }
    Ok(Any {
        // containerd registers the type under its bare full name. Spelled
        // out rather than read by reflection, which would build protobuf's
        // descriptor pool in the shim just for this string.
        type_url: METRICS_TYPE_URL.to_string(),
        value: metrics
            .write_to_bytes()
            .map_err(|e| ShimError::Other(e.to_string()))?,
        ..Default::default()
    })
}

/// The v1 memory cgroup directory of `pid`, or None on cgroup v2.
fn memory_cgroup_v1(pid: u32) -> Option<PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
        ctrls
            .split(',')
            .any(|c| c == "memory")
            .then(|| Path::new("/sys/fs/cgroup/memory").join(path.trim_start_matches('/')))
    })
}

/// The v2 cgroup directory of `pid`.
fn unified_cgroup(pid: u32) -> Option<PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let path = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    Some(Path::new("/sys/fs/cgroup").join(path.trim_start_matches('/')))
}

/// Calls `on_oom` each time the kernel OOM-kills in the cgroup of `pid`,
/// until the cgroup goes away. Returns at once if neither v1 nor v2 is found.
pub async fn watch_oom(pid: u32, on_oom: impl Fn() + Send + 'static) {
    if hierarchies::is_cgroup2_unified_mode() {
        if let Some(dir) = unified_cgroup(pid) {
            watch_oom_v2(&dir, on_oom).await;
        }
    } else if let Some(dir) = memory_cgroup_v1(pid) {
        if let Err(e) = watch_oom_v1(&dir, on_oom).await {
            info!(cgroup = %dir.display(), error = %e, "no OOM notifications for container");
        }
    }
}

/// v1: an eventfd registered on memory.oom_control through cgroup.event_control.
async fn watch_oom_v1(dir: &Path, on_oom: impl Fn()) -> std::io::Result<()> {
    let oom_control = std::fs::File::open(dir.join("memory.oom_control"))?;
    // SAFETY: eventfd(2) with valid flags; the returned fd is owned right away.
    let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if efd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: efd was just created by eventfd above and nothing else owns it.
    let efd = unsafe { OwnedFd::from_raw_fd(efd) };
    std::fs::write(
        dir.join("cgroup.event_control"),
        format!("{} {}", efd.as_raw_fd(), oom_control.as_raw_fd()),
    )?;
    // SAFETY: AsyncFd takes ownership of the OwnedFd, which stays open and
    // refers to the same eventfd until the AsyncFd is dropped.
    let efd = unsafe { AsyncFd::register(efd) }.map_err(|e| e.into_parts().1)?;
    loop {
        let mut guard = efd.readable().await?;
        let mut buf = [0u8; 8];
        // SAFETY: reading 8 bytes into an 8-byte stack buffer from our eventfd.
        let n = unsafe { libc::read(efd.as_raw_fd(), buf.as_mut_ptr().cast(), 8) };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::WouldBlock {
                guard.clear_ready();
                continue;
            }
            return Err(err);
        }
        // The kernel also signals the eventfd when the cgroup is removed.
        if !dir.exists() {
            debug!(cgroup = %dir.display(), "memory cgroup removed, OOM watch ends");
            return Ok(());
        }
        on_oom();
    }
}

/// v2: the `oom_kill` counter of memory.events, checked periodically.
async fn watch_oom_v2(dir: &Path, on_oom: impl Fn()) {
    let events = dir.join("memory.events");
    let read = || -> Option<u64> {
        let text = std::fs::read_to_string(&events).ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
    };
    let mut last = read().unwrap_or(0);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        match read() {
            Some(n) if n > last => {
                last = n;
                on_oom();
            }
            Some(_) => {}
            None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim_protos::protobuf::MessageFull;

    #[test]
    fn metrics_type_url_is_the_protobuf_full_name() {
        assert_eq!(METRICS_TYPE_URL, Metrics::descriptor().full_name());
    }
}
