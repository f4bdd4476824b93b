//! The container's root filesystem: mounting the mounts of a Create request
//! on `bundle/rootfs`, and handing them to the detached worker that takes
//! them down (`unmount.rs`).

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use containerd_shim_protos::api::Mount;
use nix::mount::MsFlags;
use tracing::warn;

use crate::{
    detached::{Detached, WorkKey},
    error::{Result, ShimError},
    lowerdirs,
    platform::Platform,
};

/// Mounts `mounts` in order on `target`. Runs blocking syscalls: call it from
/// a blocking context.
pub fn mount_all(mounts: &[Mount], target: &Path) -> Result<()> {
    std::fs::create_dir_all(target).map_err(|e| ShimError::Mount {
        target: target.to_path_buf(),
        reason: format!("create mount point: {e}"),
    })?;
    for m in mounts {
        let done = check_mount(m, target).and_then(|()| mount_one(m, target));
        if let Err(e) = done {
            // Leave nothing of a half-done rootfs behind.
            let _ = crate::unmount::unmount_all(target);
            return Err(e);
        }
    }
    Ok(())
}

/// Options that are mount flags rather than filesystem data: (name, flag, clears).
const FLAG_OPTIONS: &[(&str, MsFlags, bool)] = &[
    ("ro", MsFlags::MS_RDONLY, false),
    ("rw", MsFlags::MS_RDONLY, true),
    ("bind", MsFlags::MS_BIND, false),
    ("rbind", MsFlags::MS_BIND.union(MsFlags::MS_REC), false),
    ("nosuid", MsFlags::MS_NOSUID, false),
    ("suid", MsFlags::MS_NOSUID, true),
    ("nodev", MsFlags::MS_NODEV, false),
    ("dev", MsFlags::MS_NODEV, true),
    ("noexec", MsFlags::MS_NOEXEC, false),
    ("exec", MsFlags::MS_NOEXEC, true),
    ("sync", MsFlags::MS_SYNCHRONOUS, false),
    ("async", MsFlags::MS_SYNCHRONOUS, true),
    ("noatime", MsFlags::MS_NOATIME, false),
    ("atime", MsFlags::MS_NOATIME, true),
    ("nodiratime", MsFlags::MS_NODIRATIME, false),
    ("diratime", MsFlags::MS_NODIRATIME, true),
    ("relatime", MsFlags::MS_RELATIME, false),
    ("norelatime", MsFlags::MS_RELATIME, true),
    ("strictatime", MsFlags::MS_STRICTATIME, false),
    ("remount", MsFlags::MS_REMOUNT, false),
    ("defaults", MsFlags::empty(), false),
];

/// Splits mount options into flags and the comma-joined filesystem data.
pub fn parse_options(options: &[String]) -> (MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for o in options {
        match FLAG_OPTIONS.iter().find(|(name, _, _)| name == o) {
            Some((_, f, true)) => flags.remove(*f),
            Some((_, f, false)) => flags.insert(*f),
            None => data.push(o.as_str()),
        }
    }
    (flags, data.join(","))
}

fn mount_one(m: &Mount, target: &Path) -> Result<()> {
    let (flags, data) = parse_options(&m.options);
    let fs_type = (!m.type_.is_empty() && m.type_ != "bind").then_some(m.type_.as_str());
    let source = (!m.source.is_empty()).then_some(m.source.as_str());
    let too_long = |data: &str, how: &str| ShimError::Mount {
        target: target.to_path_buf(),
        reason: format!(
            "{} mount options are {} bytes{how}, over the kernel's {}",
            m.type_,
            data.len(),
            lowerdirs::PAGE
        ),
    };
    // errno's name too ("EINVAL: Invalid argument"): what operators grep for.
    let failed = |options: String, e: std::io::Error| ShimError::Mount {
        target: target.to_path_buf(),
        reason: format!(
            "{} mount of {} with options {options}: {}",
            m.type_,
            m.source,
            e.raw_os_error().map_or_else(
                || e.to_string(),
                |n| nix::errno::Errno::from_raw(n).to_string()
            )
        ),
    };
    if m.type_ == "overlay" && data.len() >= lowerdirs::COMPACT_AT {
        // Many layers: lowerdirs relative to their common parent.
        let Some(c) = lowerdirs::compact(&data) else {
            return Err(too_long(
                &data,
                " and the lowerdirs share no parent to shorten them by",
            ));
        };
        if c.data.len() >= lowerdirs::PAGE {
            return Err(too_long(
                &c.data,
                &format!(" even with lowerdirs relative to {}", c.dir.display()),
            ));
        }
        // The mount runs with another working directory.
        let from = || format!("{:?} (from {})", c.data, c.dir.display());
        let target = std::path::absolute(target).map_err(|e| failed(from(), e))?;
        lowerdirs::mount_from(&c.dir, source, &target, fs_type, flags, &c.data)
            .map_err(|e| failed(from(), e))?;
        return Ok(());
    }
    if data.len() >= lowerdirs::PAGE {
        return Err(too_long(&data, ""));
    }
    let data_opt = (!data.is_empty()).then_some(data.as_str());
    nix::mount::mount(source, target, fs_type, flags, data_opt)
        .map_err(|e| failed(format!("{:?}", m.options), e.into()))?;
    // A read-only bind needs a remount to take effect.
    if flags.contains(MsFlags::MS_BIND) && flags.contains(MsFlags::MS_RDONLY) {
        nix::mount::mount(
            None::<&str>,
            target,
            None::<&str>,
            flags | MsFlags::MS_REMOUNT,
            None::<&str>,
        )
        .map_err(|e| ShimError::Mount {
            target: target.to_path_buf(),
            reason: format!("read-only remount of bind mount {}: {e}", m.source),
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
        .map(|s| {
            s.lines()
                .any(|l| l.split_whitespace().last() == Some(fs_type))
        })
        .unwrap_or(true)
}

/// A rootfs the shim mounted, owned until it is unmounted.
#[derive(Debug)]
pub struct MountedRootfs {
    pub target: PathBuf,
    /// Workdirs mounted volatile, whose markers go after a clean unmount.
    pub volatile_workdirs: Vec<PathBuf>,
}

/// The keys of detached work on a rootfs: its target and its volatile
/// workdirs (a new mount of the same snapshot needs both free).
pub fn work_keys(target: &Path, workdirs: &[PathBuf]) -> Vec<WorkKey> {
    std::iter::once(target)
        .chain(workdirs.iter().map(PathBuf::as_path))
        .map(|p| WorkKey::Path(p.to_path_buf()))
        .collect()
}

/// Starts the unmount of a deleted container's rootfs and returns at once.
/// The worker holds no lock: nothing another call needs can wait on it.
/// Failures are retried with a log line each, and logged as errors when
/// retries run out.
pub fn unmount_detached(
    work: &Detached,
    platform: Arc<dyn Platform>,
    id: String,
    rootfs: MountedRootfs,
) {
    let job = work.begin(work_keys(&rootfs.target, &rootfs.volatile_workdirs));
    tokio::task::spawn_blocking(move || {
        let _job = job;
        let mut attempt = 1;
        loop {
            match platform.unmount(&rootfs.target) {
                Ok(took) => {
                    crate::metrics::FIGURES.rootfs_unmounts.observe(took);
                    crate::volatile::clear_markers(&rootfs.volatile_workdirs);
                    break;
                }
                Err(e) if attempt < UNMOUNT_ATTEMPTS => {
                    warn!(id, attempt, error = %e, "rootfs unmount failed, retrying");
                    std::thread::sleep(Duration::from_secs(attempt as u64));
                    attempt += 1;
                }
                Err(e) => {
                    crate::metrics::inc(&crate::metrics::FIGURES.rootfs_unmount_failures);
                    tracing::error!(id, attempts = attempt, error = %e, "rootfs unmount failed for good; the mount is left in place");
                    break;
                }
            }
        }
    });
}

/// How often a failing unmount is tried before it is reported for good.
const UNMOUNT_ATTEMPTS: u32 = 5;

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
        assert!(
            e.to_string().contains("unknown mount type \"nosuchfs\""),
            "{e}"
        );
    }

    #[test]
    fn missing_overlay_dir_is_named() {
        let e = check_mount(
            &mount("overlay", "overlay", &["lowerdir=/nonexistent/l"]),
            Path::new("/t"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/l"), "{e}");
    }

    #[test]
    fn options_split_into_flags_and_data() {
        let opts: Vec<String> = ["ro", "nosuid", "lowerdir=/a:/b", "volatile"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (flags, data) = parse_options(&opts);
        assert!(flags.contains(MsFlags::MS_RDONLY | MsFlags::MS_NOSUID));
        assert_eq!(data, "lowerdir=/a:/b,volatile");
    }

    fn overlay_of(lowers: impl Iterator<Item = String>) -> Mount {
        let lower = format!("lowerdir={}", lowers.collect::<Vec<_>>().join(":"));
        mount("overlay", "overlay", &[&lower, "upperdir=/u", "workdir=/w"])
    }

    #[test]
    fn overlay_options_too_long_even_compacted_are_named() {
        let long = "y".repeat(100);
        let m = overlay_of((0..50).map(|i| format!("/snapshots/{long}{i}/fs")));
        let e = mount_one(&m, Path::new("/t")).unwrap_err().to_string();
        assert!(
            e.contains("even with lowerdirs relative to /snapshots") && e.contains("4096"),
            "{e}"
        );
    }

    #[test]
    fn overlay_options_too_long_without_common_parent_are_named() {
        let long = "z".repeat(100);
        let m = overlay_of((0..50).map(|i| format!("/{long}{i}/fs")));
        let e = mount_one(&m, Path::new("/t")).unwrap_err().to_string();
        assert!(e.contains("share no parent") && e.contains("4096"), "{e}");
    }
}
