//! Overlay mounts of images with many layers.
//!
//! The kernel copies one page of mount data, and containerd's snapshot paths
//! make each lowerdir some 70 bytes long, so an image of 60 layers or so no
//! longer fits. Like the stock shim, brisk then names the lowerdirs relative
//! to their common parent (`…/snapshots`), leaving about 7 bytes each, and
//! mounts from a thread whose working directory is that parent.
//!
//! The working directory is per process, so the thread first unshares its
//! filesystem attributes (`CLONE_FS`): the chdir is then seen by that thread
//! alone, which ends right after the mount.

use std::path::{Component, Path, PathBuf};

use nix::mount::MsFlags;

/// What the kernel takes as mount data: one page, its terminating NUL included.
pub const PAGE: usize = 4096;

/// Mount data at least this long is compacted. The margin leaves room for the
/// options the kernel's legacy parser adds on its own, as the stock shim does.
pub const COMPACT_AT: usize = PAGE - 512;

/// Overlay mount data with relative lowerdirs, and where they are relative to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compacted {
    pub dir: PathBuf,
    pub data: String,
}

/// Rewrites the `lowerdir=` option of comma-joined overlay mount `data` with
/// the lowerdirs relative to the parent directory they all share. None when
/// there is nothing to shorten: no lowerdir option, a lowerdir that is not a
/// plain absolute path, or no common parent other than `/`.
pub fn compact(data: &str) -> Option<Compacted> {
    let opts: Vec<&str> = data.split(',').collect();
    let idx = opts.iter().position(|o| o.starts_with("lowerdir="))?;
    let dirs: Vec<&Path> = opts[idx]["lowerdir=".len()..]
        .split(':')
        .map(Path::new)
        .collect();
    if dirs.iter().any(|d| !plain_absolute(d)) {
        return None;
    }
    let mut common: Vec<Component> = dirs[0].parent()?.components().collect();
    for d in &dirs[1..] {
        let parent: Vec<Component> = d.parent()?.components().collect();
        let same = common
            .iter()
            .zip(&parent)
            .take_while(|(a, b)| a == b)
            .count();
        common.truncate(same);
    }
    // Only the root in common: nothing gained, and never chdir to `/`.
    if common.len() < 2 {
        return None;
    }
    let dir: PathBuf = common.iter().collect();
    let relative: Vec<String> = dirs
        .iter()
        .map(|d| {
            d.strip_prefix(&dir)
                .map(|r| r.to_string_lossy().into_owned())
        })
        .collect::<Result<_, _>>()
        .ok()?;
    let lowerdir = format!("lowerdir={}", relative.join(":"));
    let mut out = opts;
    out[idx] = &lowerdir;
    Some(Compacted {
        dir,
        data: out.join(","),
    })
}

/// Absolute, without `.` or `..`, and free of the characters overlayfs
/// treats specially in a lowerdir list (an escape, or a second option).
fn plain_absolute(p: &Path) -> bool {
    let s = p.as_os_str().as_encoded_bytes();
    p.is_absolute()
        && !s.contains(&b'\\')
        && p.components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
}

/// Mounts `data` (whose relative paths are relative to `dir`) on the absolute
/// `target`, from a thread of its own whose working directory is `dir`.
/// Blocking.
pub fn mount_from(
    dir: &Path,
    source: Option<&str>,
    target: &Path,
    fs_type: Option<&str>,
    flags: MsFlags,
    data: &str,
) -> std::io::Result<()> {
    std::thread::scope(|s| {
        let worker = std::thread::Builder::new()
            .name("overlay-mount".into())
            .spawn_scoped(s, || -> std::io::Result<()> {
                // From here on this thread's cwd is its own; the shim's other
                // threads keep theirs.
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS)?;
                nix::unistd::chdir(dir)?;
                nix::mount::mount(source, target, fs_type, flags, Some(data))?;
                Ok(())
            })?;
        worker
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("overlay mount thread panicked")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SNAPSHOTS: &str = "/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots";

    fn lowers(ids: impl IntoIterator<Item = usize>) -> String {
        ids.into_iter()
            .map(|i| format!("{SNAPSHOTS}/{i}/fs"))
            .collect::<Vec<_>>()
            .join(":")
    }

    #[test]
    fn lowerdirs_become_relative_to_the_snapshots_dir() {
        let data = format!(
            "index=off,lowerdir={},upperdir={SNAPSHOTS}/200/fs,workdir={SNAPSHOTS}/200/work,volatile",
            lowers(100..190)
        );
        assert!(data.len() >= PAGE, "test data is {} bytes", data.len());
        let c = compact(&data).expect("compacted");
        assert_eq!(c.dir, Path::new(SNAPSHOTS));
        let want_lower = (100..190)
            .map(|i| format!("{i}/fs"))
            .collect::<Vec<_>>()
            .join(":");
        assert_eq!(
            c.data,
            format!(
                "index=off,lowerdir={want_lower},upperdir={SNAPSHOTS}/200/fs,workdir={SNAPSHOTS}/200/work,volatile"
            )
        );
        assert!(c.data.len() < COMPACT_AT);
    }

    #[test]
    fn common_parent_is_a_whole_component() {
        // "/a/snap1" and "/a/snap12" share the string "/a/snap1", not a dir.
        let c = compact("lowerdir=/a/snap1/fs:/a/snap12/fs").unwrap();
        assert_eq!(c.dir, Path::new("/a"));
        assert_eq!(c.data, "lowerdir=snap1/fs:snap12/fs");
    }

    #[test]
    fn nothing_to_shorten() {
        for data in [
            "upperdir=/u,workdir=/w",
            "lowerdir=/a/fs:/b/fs",
            "lowerdir=/fs",
            "lowerdir=/a/../b/fs:/a/c/fs",
            "lowerdir=relative/fs:/a/c/fs",
            "lowerdir=/a/x\\:y/fs:/a/c/fs",
        ] {
            assert_eq!(compact(data), None, "{data}");
        }
    }

    #[test]
    fn single_lowerdir_is_relative_to_its_parent() {
        let c = compact("lowerdir=/s/1/fs,ro").unwrap();
        assert_eq!(
            (c.dir.as_path(), c.data.as_str()),
            (Path::new("/s/1"), "lowerdir=fs,ro")
        );
    }

    /// A real overlay mount whose absolute lowerdirs exceed a page, as root
    /// (skipped otherwise); the shim's own working directory stays put.
    #[test]
    fn mounts_more_than_a_page_of_lowerdirs() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("needs root to mount: skipping");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let snaps = tmp.path().join("x".repeat(60));
        let mut lower = Vec::new();
        for i in 0..80 {
            let d = snaps.join(i.to_string()).join("fs");
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join(format!("f{i}")), "").unwrap();
            lower.push(d.display().to_string());
        }
        lower.reverse();
        let (upper, work, merged) = (
            tmp.path().join("upper"),
            tmp.path().join("work"),
            tmp.path().join("merged"),
        );
        for d in [&upper, &work, &merged] {
            std::fs::create_dir_all(d).unwrap();
        }
        let data = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.join(":"),
            upper.display(),
            work.display()
        );
        assert!(data.len() > PAGE, "{}", data.len());
        let c = compact(&data).unwrap();
        let cwd = std::env::current_dir().unwrap();
        mount_from(
            &c.dir,
            Some("overlay"),
            &merged,
            Some("overlay"),
            MsFlags::empty(),
            &c.data,
        )
        .expect("mount");
        let seen = ["f0", "f79"].map(|f| merged.join(f).exists());
        nix::mount::umount2(&merged, nix::mount::MntFlags::MNT_DETACH).unwrap();
        assert_eq!(seen, [true, true], "bottom and top lowerdir visible");
        assert_eq!(std::env::current_dir().unwrap(), cwd);
    }
}
