//! overlayfs `volatile`: with it the kernel never syncs the upper directory,
//! not even at umount, so an exiting container's unmount has nothing to
//! flush however much dirty data the node holds.
//!
//! Support is probed once per shim with a scratch mount, never guessed from
//! the kernel version (vendor kernels backport it). A volatile mount leaves
//! `WORKDIR/work/incompat/volatile` behind; the kernel refuses to mount that
//! workdir again while it exists. After a clean unmount the marker is ours to
//! remove; a marker found at Create means an unclean shutdown, after which
//! the upper directory cannot be trusted.

use std::{
    path::{Path, PathBuf},
    sync::OnceLock,
};

use containerd_shim_protos::api::Mount;
use nix::mount::{MntFlags, MsFlags};
use tracing::{info, warn};

use crate::error::{Result, ShimError};

/// The pod annotation that turns volatile off for one pod ("false").
pub const ANNOTATION: &str = "io.containerd.brisk.volatile";

static SUPPORTED: OnceLock<bool> = OnceLock::new();

/// Whether the kernel accepts `volatile`; probed on first use, then cached.
pub fn supported() -> bool {
    *SUPPORTED.get_or_init(|| {
        let ok = probe_once();
        info!(supported = ok, "probed overlayfs volatile support");
        ok
    })
}

/// One probe with a scratch mount, in a fresh private directory (see
/// [`crate::private_dir`]): a fixed name in `/tmp` would let a local user
/// plant `merged` as a symlink and have root mount over their target.
fn probe_once() -> bool {
    match crate::private_dir::scratch("volatile-probe-") {
        Ok(dir) => probe(dir.path()),
        Err(e) => {
            warn!(error = %e, "cannot create the volatile probe's directory");
            false
        }
    }
}

/// Mounts a volatile overlay of empty directories made fresh inside `dir`
/// (`create_dir`, which refuses what exists and follows no symlink).
fn probe(dir: &Path) -> bool {
    let sub = |n: &str| dir.join(n);
    for d in ["lower", "upper", "work", "merged"] {
        if std::fs::create_dir(sub(d)).is_err() {
            return false;
        }
    }
    let data = format!(
        "lowerdir={},upperdir={},workdir={},volatile",
        sub("lower").display(),
        sub("upper").display(),
        sub("work").display()
    );
    let merged = sub("merged");
    if nix::mount::mount(
        Some("overlay"),
        &merged,
        Some("overlay"),
        MsFlags::empty(),
        Some(data.as_str()),
    )
    .is_err()
    {
        return false;
    }
    let _ = nix::mount::umount2(&merged, MntFlags::MNT_DETACH);
    true
}

fn is_volatile_option(o: &str) -> bool {
    o == "volatile" || o == "fsync=volatile"
}

/// The marker directory a volatile mount of `workdir` leaves behind.
pub fn marker(workdir: &Path) -> PathBuf {
    workdir.join("work").join("incompat").join("volatile")
}

fn workdir_of(m: &Mount) -> Option<PathBuf> {
    m.options
        .iter()
        .find_map(|o| o.strip_prefix("workdir="))
        .map(PathBuf::from)
}

/// Prepares the overlay mounts of a Create: refuses (or, when the operator
/// said so, discards) a workdir left dirty by an unclean shutdown, and adds
/// `volatile` where wanted and supported. Returns the workdirs that will be
/// mounted volatile, whose markers go after a clean unmount.
pub fn prepare(mounts: &mut [Mount], enable: bool, discard_dirty: bool) -> Result<Vec<PathBuf>> {
    let mut volatile_workdirs = Vec::new();
    for m in mounts.iter_mut().filter(|m| m.type_ == "overlay") {
        let Some(workdir) = workdir_of(m) else {
            continue;
        };
        let mark = marker(&workdir);
        if mark.exists() {
            if !discard_dirty {
                return Err(ShimError::Mount {
                    target: workdir.clone(),
                    reason: format!(
                        "{} exists: an earlier volatile mount of this snapshot was not unmounted cleanly, so its upper directory cannot be trusted; remove the snapshot, or set discard_dirty_volatile_workdir = true in brisk.toml",
                        mark.display()
                    ),
                });
            }
            warn!(workdir = %workdir.display(), "discarding the volatile marker of a dirty workdir as configured");
            std::fs::remove_dir_all(&mark)
                .map_err(|e| ShimError::io(format!("remove {}", mark.display()), e))?;
        }
        let already = m.options.iter().any(|o| is_volatile_option(o));
        if !already && enable && supported() {
            m.options.push("volatile".into());
        }
        if already || (enable && supported()) {
            volatile_workdirs.push(workdir);
        }
    }
    Ok(volatile_workdirs)
}

/// After a clean unmount: lets the same workdir be mounted again.
pub fn clear_markers(workdirs: &[PathBuf]) {
    for w in workdirs {
        let mark = marker(w);
        match std::fs::remove_dir_all(&mark) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => warn!(marker = %mark.display(), error = %e, "cannot remove volatile marker"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    use super::*;
    use crate::private_dir::RemoveOnDrop;

    /// A local user (uid 65534) plants the old probe directory in /tmp with
    /// `merged` a symlink to a directory of theirs: the probe must neither
    /// mount there nor touch or remove what they planted.
    #[test]
    fn probe_ignores_a_directory_planted_in_tmp() {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: the probe mounts, which needs root");
            return;
        }
        let created_root = !Path::new(crate::private_dir::ROOT).exists();
        let planted =
            std::env::temp_dir().join(format!("brisk-volatile-probe-{}", std::process::id()));
        let _cleanup = RemoveOnDrop(vec![planted.clone()]);
        let theirs = tempfile::tempdir().unwrap();
        for d in ["lower", "upper", "work"] {
            std::fs::create_dir_all(planted.join(d)).unwrap();
        }
        std::os::unix::fs::symlink(theirs.path(), planted.join("merged")).unwrap();
        for p in [
            &planted,
            &planted.join("work"),
            &theirs.path().to_path_buf(),
        ] {
            std::os::unix::fs::lchown(p, Some(65534), Some(65534)).unwrap();
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o777)).unwrap();
        }

        probe_once();

        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let theirs_str = theirs.path().display().to_string();
        assert!(
            !mountinfo
                .lines()
                .any(|l| l.split(' ').nth(4) == Some(theirs_str.as_str())),
            "the probe mounted over the planted symlink's target"
        );
        let names = |p: &Path| {
            let mut v: Vec<_> = std::fs::read_dir(p)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            v.sort();
            v
        };
        assert_eq!(names(&planted), ["lower", "merged", "upper", "work"]);
        assert!(
            names(&planted.join("work")).is_empty(),
            "overlay used the planted workdir"
        );
        assert!(names(theirs.path()).is_empty());
        assert_eq!(std::fs::symlink_metadata(&planted).unwrap().uid(), 65534);
        if created_root {
            let _ = std::fs::remove_dir(crate::private_dir::ROOT);
        }
    }

    fn overlay(workdir: &Path, extra: &[&str]) -> Mount {
        let mut options = vec![
            "lowerdir=/l".to_string(),
            "upperdir=/u".to_string(),
            format!("workdir={}", workdir.display()),
        ];
        options.extend(extra.iter().map(|s| s.to_string()));
        Mount {
            type_: "overlay".into(),
            source: "overlay".into(),
            options,
            ..Default::default()
        }
    }

    #[test]
    fn existing_volatile_spellings_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        for spelling in ["volatile", "fsync=volatile"] {
            let mut m = [overlay(dir.path(), &[spelling])];
            let w = prepare(&mut m, true, false).unwrap();
            assert_eq!(
                m[0].options
                    .iter()
                    .filter(|o| is_volatile_option(o))
                    .count(),
                1
            );
            assert_eq!(w, vec![dir.path().to_path_buf()]);
        }
    }

    #[test]
    fn disabled_adds_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = [overlay(dir.path(), &[])];
        assert!(prepare(&mut m, false, false).unwrap().is_empty());
        assert!(!m[0].options.iter().any(|o| is_volatile_option(o)));
    }

    #[test]
    fn dirty_marker_is_refused_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(marker(dir.path())).unwrap();
        let mut m = [overlay(dir.path(), &[])];
        let e = prepare(&mut m, true, false).unwrap_err().to_string();
        assert!(
            e.contains("work/incompat/volatile") && e.contains("not unmounted cleanly"),
            "{e}"
        );
    }

    #[test]
    fn dirty_marker_is_discarded_when_configured() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(marker(dir.path())).unwrap();
        let mut m = [overlay(dir.path(), &[])];
        prepare(&mut m, true, true).unwrap();
        assert!(!marker(dir.path()).exists());
    }
}
