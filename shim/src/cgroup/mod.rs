//! A container's cgroup: where it is, its figures for Stats, and its OOM
//! kills. cgroup v1 (one directory per controller) and v2 (one unified
//! directory) both occur on real nodes; which one a node runs is decided
//! once, by whether `/sys/fs/cgroup` is the unified hierarchy.

mod leftover;
mod locate;
mod metrics_v1;
mod metrics_v2;
mod oom;
mod pod_ledger;

use std::path::{Path, PathBuf};

use containerd_shim_protos::protobuf::well_known_types::any::Any;
use tracing::info;

pub use leftover::{remove_exited, remove_leftover};
pub use oom::OomWatch;
pub use pod_ledger::PodLedgers;

use crate::error::{Result, ShimError};

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// True on a node whose cgroups are v2 only.
pub fn is_unified() -> bool {
    Path::new(CGROUP_ROOT).join("cgroup.controllers").exists()
}

/// A container's cgroup directory: the unified one on v2, the memory
/// controller's on v1 (where OOM kills are counted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerCgroup {
    pub dir: PathBuf,
    pub unified: bool,
}

/// The cgroup of a container just created by runc, whose init is `pid`:
/// where the spec's `cgroups_path` puts it for runc's driver (`systemd`),
/// else where the init is now.
pub fn locate(cgroups_path: Option<&str>, systemd: bool, pid: u32) -> Option<ContainerCgroup> {
    let unified = is_unified();
    let root = if unified {
        PathBuf::from(CGROUP_ROOT)
    } else {
        Path::new(CGROUP_ROOT).join("memory")
    };
    let from_spec = cgroups_path
        .and_then(|p| locate::container_dir(&root, p, systemd))
        .filter(|d| d.is_dir());
    let now = if unified {
        unified_dir(pid)
    } else {
        v1_dir(pid, "memory")
    };
    let dir = match (from_spec, now) {
        (Some(spec), now) => {
            if now.as_ref() != Some(&spec) {
                info!(pid, cgroup = %spec.display(), now = ?now, "container's init not in its cgroup yet (systemd still moving it)");
            }
            spec
        }
        (None, now) => now?,
    };
    Some(ContainerCgroup { dir, unified })
}

/// Metrics of a container: containerd's v2 `Metrics` type from its cgroup
/// on a v2 node, the v1 type (of the cgroup of `pid`) otherwise, each as
/// the stock shim reports it, since containerd's CRI picks the decoding by
/// the type.
pub fn metrics(cgroup: Option<&ContainerCgroup>, pid: u32) -> Result<Any> {
    match cgroup {
        Some(cg) if cg.unified => metrics_v2::collect(&cg.dir),
        None if is_unified() => {
            let dir = unified_dir(pid).ok_or_else(|| no_cgroup(pid))?;
            metrics_v2::collect(&dir)
        }
        _ => metrics_v1::collect(pid),
    }
}

fn no_cgroup(pid: u32) -> ShimError {
    ShimError::Other(format!("no cgroup for pid {pid} (has it exited?)"))
}

/// The lines of `/proc/PID/cgroup`: `hierarchy-id:controllers:path`.
fn proc_cgroup(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()
}

/// The v2 directory of `pid`.
fn unified_dir(pid: u32) -> Option<PathBuf> {
    let text = proc_cgroup(pid)?;
    let path = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    Some(Path::new(CGROUP_ROOT).join(path.trim_start_matches('/')))
}

/// The v1 directory of `pid` for `controller`.
fn v1_dir(pid: u32, controller: &str) -> Option<PathBuf> {
    let text = proc_cgroup(pid)?;
    text.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
        ctrls.split(',').any(|c| c == controller).then(|| {
            Path::new(CGROUP_ROOT)
                .join(controller)
                .join(path.trim_start_matches('/'))
        })
    })
}

/// `key value` lines (memory.stat, cpu.stat, memory.events, ...), read
/// into `set` one pair at a time; unknown keys are the caller's to skip.
fn read_flat_keyed(path: &Path, mut set: impl FnMut(&str, u64)) -> std::io::Result<()> {
    let text = std::fs::read_to_string(path)?;
    for line in text.lines() {
        let mut it = line.split_whitespace();
        if let (Some(k), Some(v)) = (it.next(), it.next()) {
            if let Ok(v) = v.parse() {
                set(k, v);
            }
        }
    }
    Ok(())
}

/// The one `oom_kill N` line of memory.events (v2) or memory.oom_control (v1).
fn read_oom_kills(path: &Path) -> Option<u64> {
    let mut n = None;
    read_flat_keyed(path, |k, v| {
        if k == "oom_kill" {
            n = Some(v);
        }
    })
    .ok()?;
    n
}
