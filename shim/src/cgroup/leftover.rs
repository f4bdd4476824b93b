//! The cgroups runc leaves when it cannot finish. A `runc create` killed
//! midway (at the shim's runc timeout, or by a containerd that went away)
//! has made the container's cgroups but not written its state, so `runc
//! delete --force` then finds no container and removes only its state
//! directory: each such create would leave one empty cgroup per hierarchy
//! below the pod's for as long as the node runs. And a dead shim's
//! container whose `runc delete --force` cannot run (a hung runc) still has
//! its processes in them (`dead_shim.rs`).
//!
//! With runc's cgroupfs driver the processes are killed and the cgroups
//! removed. With the systemd driver the container's cgroup is a transient
//! scope, which systemd itself removes once it is empty: its processes are
//! killed, and the rest is systemd's.

use std::{
    io,
    os::fd::{AsFd, AsRawFd},
    path::{Component, Path, PathBuf},
    time::{Duration, Instant},
};

use tracing::{info, warn};

use super::{locate, CGROUP_ROOT};
use crate::process_handle::ProcessHandle;

/// How long a process left in such a cgroup (runc's init of the failed
/// create, a dead shim's container) is waited for after its SIGKILL.
const KILL_WAIT_MS: i32 = 2000;

/// Kills what runs in the cgroups `cgroups_path` names on every hierarchy
/// of the node and, with the cgroupfs driver (`systemd` false), removes
/// them. Returns those removed.
pub fn remove_leftover(cgroups_path: &str, systemd: bool) -> Vec<PathBuf> {
    remove_under(&hierarchies(Path::new(CGROUP_ROOT)), cgroups_path, systemd)
}

/// How long the cgroup of a container whose init exited may stay busy:
/// the rest of its processes, killed by the kernel with the init of their
/// pid namespace, may still be on their way out.
const EXITED_BUSY_FOR: Duration = Duration::from_millis(200);

/// Removes the cgroups `cgroups_path` names (runc's cgroupfs driver) on
/// every hierarchy of the node, for a container whose processes have all
/// exited: what `runc delete` does with them. Returns how many it removed;
/// an error names the first that would not go (then `runc delete` must).
pub fn remove_exited(cgroups_path: &str) -> io::Result<usize> {
    remove_exited_under(&hierarchies(Path::new(CGROUP_ROOT)), cgroups_path)
}

fn remove_exited_under(roots: &[PathBuf], cgroups_path: &str) -> io::Result<usize> {
    let dirs = container_dirs(roots, cgroups_path, false)?;
    for dir in &dirs {
        remove_when_empty(dir)?;
    }
    Ok(dirs.len())
}

/// The container's cgroup directories below `roots`: real directories
/// only, no symlink followed. The path comes from the bundle, so one that
/// climbs with `..` out of the roots is refused.
fn container_dirs(
    roots: &[PathBuf],
    cgroups_path: &str,
    systemd: bool,
) -> io::Result<Vec<PathBuf>> {
    if Path::new(cgroups_path)
        .components()
        .any(|c| matches!(c, Component::ParentDir))
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("cgroups path {cgroups_path:?} climbs with '..'"),
        ));
    }
    Ok(roots
        .iter()
        .filter_map(|root| locate::container_dir(root, cgroups_path, systemd))
        .filter(|dir| std::fs::symlink_metadata(dir).is_ok_and(|m| m.is_dir()))
        .collect())
}

/// rmdir of `dir`, tried again while the kernel says it is busy, for
/// [`EXITED_BUSY_FOR`] at most.
fn remove_when_empty(dir: &Path) -> io::Result<()> {
    let deadline = Instant::now() + EXITED_BUSY_FOR;
    let mut pause = Duration::from_millis(1);
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(20));
            }
            Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", dir.display()))),
        }
    }
}

/// The hierarchies below `root`: `root` itself on a unified node, else each
/// mounted hierarchy (`memory`, `cpu,cpuacct`, `systemd`, `unified`, ...),
/// its alias links (`cpu -> cpu,cpuacct`) left out.
fn hierarchies(root: &Path) -> Vec<PathBuf> {
    if root.join("cgroup.controllers").exists() {
        return vec![root.to_path_buf()];
    }
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect()
}

fn remove_under(roots: &[PathBuf], cgroups_path: &str, systemd: bool) -> Vec<PathBuf> {
    let dirs = match container_dirs(roots, cgroups_path, systemd) {
        Ok(dirs) => dirs,
        Err(e) => {
            warn!(cgroups_path, error = %e, "its cgroups are left alone");
            return Vec::new();
        }
    };
    let mut removed = Vec::new();
    for dir in dirs {
        let started = Instant::now();
        kill_members(&dir);
        if systemd {
            continue;
        }
        match std::fs::remove_dir(&dir) {
            Ok(()) => {
                info!(cgroup = %dir.display(), took = ?started.elapsed(), "cgroup runc left removed");
                removed.push(dir);
            }
            Err(e) => {
                warn!(cgroup = %dir.display(), error = %e, "cgroup runc left not removed")
            }
        }
    }
    removed
}

/// SIGKILLs every process still in `dir` (a runc init whose `runc create`
/// died, a dead shim's container) and waits for each to exit.
fn kill_members(dir: &Path) {
    let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) else {
        return;
    };
    for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        let Ok(handle) = ProcessHandle::open(pid) else {
            continue;
        };
        if handle.signal(libc::SIGKILL).is_ok() {
            if let Err(e) = wait_exit(&handle) {
                warn!(pid, error = %e, "process of a cgroup runc left did not exit");
            }
        }
    }
}

/// Waits until the pidfd says the process exited, or `KILL_WAIT_MS`.
fn wait_exit(handle: &ProcessHandle) -> io::Result<()> {
    let mut pfd = libc::pollfd {
        fd: handle.as_fd().as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one pollfd, valid for the call, on a pidfd the handle owns.
    match unsafe { libc::poll(&mut pfd, 1, KILL_WAIT_MS) } {
        0 => Err(io::Error::new(io::ErrorKind::TimedOut, "still running")),
        n if n < 0 => Err(io::Error::last_os_error()),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A v1 layout in a temporary directory: two hierarchies, an alias
    /// link, and the cgroups a killed create left in both.
    #[test]
    fn a_failed_creates_cgroups_go_on_every_hierarchy_and_their_parent_stays() {
        let root = tempfile::tempdir().unwrap();
        for h in ["memory", "cpu,cpuacct"] {
            std::fs::create_dir_all(root.path().join(h).join("pod1/c1")).unwrap();
        }
        std::os::unix::fs::symlink("cpu,cpuacct", root.path().join("cpu")).unwrap();
        let roots = hierarchies(root.path());
        assert_eq!(roots.len(), 2, "{roots:?}");
        let removed = remove_under(&roots, "/pod1/c1", false);
        assert_eq!(removed.len(), 2, "{removed:?}");
        for h in ["memory", "cpu,cpuacct"] {
            assert!(!root.path().join(h).join("pod1/c1").exists());
            assert!(root.path().join(h).join("pod1").is_dir());
        }
    }

    #[test]
    fn an_exited_containers_cgroups_go_on_every_hierarchy() {
        let root = tempfile::tempdir().unwrap();
        for h in ["memory", "cpu,cpuacct", "unified"] {
            std::fs::create_dir_all(root.path().join(h).join("pod1/c1")).unwrap();
        }
        // A hierarchy where the container has no cgroup is no failure.
        std::fs::create_dir_all(root.path().join("pids/pod1")).unwrap();
        let roots = hierarchies(root.path());
        assert_eq!(remove_exited_under(&roots, "/pod1/c1").unwrap(), 3);
        for h in ["memory", "cpu,cpuacct", "unified"] {
            assert!(!root.path().join(h).join("pod1/c1").exists());
            assert!(root.path().join(h).join("pod1").is_dir());
        }
        // Gone already: nothing to do.
        assert_eq!(remove_exited_under(&roots, "/pod1/c1").unwrap(), 0);
    }

    #[test]
    fn a_cgroup_that_will_not_go_is_an_error_naming_it() {
        let root = tempfile::tempdir().unwrap();
        let c1 = root.path().join("memory/pod1/c1");
        std::fs::create_dir_all(c1.join("nested")).unwrap();
        let roots = hierarchies(root.path());
        let e = remove_exited_under(&roots, "/pod1/c1").unwrap_err();
        assert!(e.to_string().contains("pod1/c1"), "{e}");
        assert!(remove_exited_under(&roots, "/pod1/../c1").is_err());
    }

    /// With the systemd driver the scope is systemd's to remove.
    #[test]
    fn a_systemd_scope_is_left_to_systemd() {
        let root = tempfile::tempdir().unwrap();
        let scope = root
            .path()
            .join("unified/kubepods.slice/cri-containerd-c1.scope");
        std::fs::create_dir_all(&scope).unwrap();
        std::fs::write(scope.join("cgroup.procs"), "").unwrap();
        let roots = vec![root.path().join("unified")];
        assert!(remove_under(&roots, "kubepods.slice:cri-containerd:c1", true).is_empty());
        assert!(scope.is_dir());
    }

    #[test]
    fn a_path_that_climbs_or_is_not_there_removes_nothing() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("memory/other")).unwrap();
        let roots = hierarchies(root.path());
        assert!(remove_under(&roots, "/pod1/../other", false).is_empty());
        assert!(root.path().join("memory/other").is_dir());
        assert!(remove_under(&roots, "/pod1/c9", false).is_empty());
    }
}
