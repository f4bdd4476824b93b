//! The container's root filesystem: mounting the mounts of a Create request
//! on `bundle/rootfs`, and taking them down again.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use containerd_shim_protos::api::Mount;
use nix::{errno::Errno, mount::MntFlags};
use tracing::{info, warn};

use crate::error::{Result, ShimError};

/// Unmounts slower than this are logged as warnings.
const SLOW_UMOUNT: Duration = Duration::from_secs(1);

/// Mounts `mounts` in order on `target`. Runs blocking syscalls: call it from
/// a blocking context.
pub fn mount_all(mounts: &[Mount], target: &Path) -> Result<()> {
    std::fs::create_dir_all(target).map_err(|e| ShimError::Mount {
        target: target.to_path_buf(),
        reason: format!("create mount point: {e}"),
    })?;
    for m in mounts {
        check_mount(m, target)?;
        let fs_type = (!m.type_.is_empty()).then_some(m.type_.as_str());
        let source = (!m.source.is_empty()).then_some(m.source.as_str());
        containerd_shim::mount::mount_rootfs(fs_type, source, &m.options, target).map_err(|e| {
            ShimError::Mount {
                target: target.to_path_buf(),
                reason: format!("{} mount of {} with options {:?}: {e}", m.type_, m.source, m.options),
            }
        })?;
    }
    Ok(())
}

/// Catches the mistakes that would otherwise surface as a bare EINVAL.
fn check_mount(m: &Mount, target: &Path) -> Result<()> {
    let bad = |reason: String| ShimError::Mount {
        target: target.to_path_buf(),
        reason,
    };
    if m.type_ != "bind" && m.type_ != "overlay" && !filesystem_known(&m.type_) {
        return Err(bad(format!("unknown mount type {:?}", m.type_)));
    }
    if m.type_ == "bind" && !Path::new(&m.source).exists() {
        return Err(bad(format!("bind source {} does not exist", m.source)));
    }
    if m.type_ == "overlay" {
        for o in &m.options {
            for key in ["lowerdir=", "upperdir=", "workdir="] {
                if let Some(dirs) = o.strip_prefix(key) {
                    if let Some(missing) = dirs.split(':').find(|d| !Path::new(d).exists()) {
                        return Err(bad(format!("overlay {key}{missing} does not exist")));
                    }
                }
            }
        }
    }
    Ok(())
}

/// True when the kernel lists `fs_type` in /proc/filesystems.
fn filesystem_known(fs_type: &str) -> bool {
    std::fs::read_to_string("/proc/filesystems")
        .map(|s| s.lines().any(|l| l.split_whitespace().last() == Some(fs_type)))
        .unwrap_or(true)
}

/// Detaches and unmounts everything on `target` (a lazy unmount first, so no
/// new access can start), until the kernel says nothing is mounted there. A
/// mount that is already gone counts as done: containerd's own bundle cleanup
/// may have unmounted it first. Blocking.
pub fn unmount_all(target: &Path) -> Result<Duration> {
    let started = Instant::now();
    loop {
        match nix::mount::umount2(target, MntFlags::MNT_DETACH) {
            Ok(()) => continue,
            Err(Errno::EINVAL) | Err(Errno::ENOENT) => break,
            Err(Errno::EINTR) | Err(Errno::EBUSY) => {
                std::thread::sleep(Duration::from_millis(50));
                if started.elapsed() > Duration::from_secs(60) {
                    return Err(ShimError::Mount {
                        target: target.to_path_buf(),
                        reason: "still busy after 60s".into(),
                    });
                }
            }
            Err(e) => {
                return Err(ShimError::Mount {
                    target: target.to_path_buf(),
                    reason: format!("umount: {e}"),
                })
            }
        }
    }
    let took = started.elapsed();
    if took > SLOW_UMOUNT {
        warn!(target = %target.display(), ?took, "slow rootfs unmount");
    } else {
        info!(target = %target.display(), ?took, "rootfs unmounted");
    }
    Ok(took)
}

/// Where the rootfs of a bundle is mounted.
pub fn rootfs_of(bundle: &Path) -> PathBuf {
    bundle.join("rootfs")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(t: &str, source: &str, options: &[&str]) -> Mount {
        Mount {
            type_: t.into(),
            source: source.into(),
            options: options.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn unknown_type_is_named() {
        let e = check_mount(&mount("nosuchfs", "x", &[]), Path::new("/t")).unwrap_err();
        assert!(e.to_string().contains("unknown mount type \"nosuchfs\""), "{e}");
    }

    #[test]
    fn missing_overlay_dir_is_named() {
        let e = check_mount(&mount("overlay", "overlay", &["lowerdir=/nonexistent/l"]), Path::new("/t")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/l"), "{e}");
    }

    #[test]
    fn unmount_of_nothing_is_done() {
        let dir = tempfile::tempdir().unwrap();
        unmount_all(dir.path()).unwrap();
        unmount_all(&dir.path().join("gone")).unwrap();
    }
}
