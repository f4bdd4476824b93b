//! The shim's own scratch directories (console sockets, the volatile probe).
//!
//! Never in a directory others can write to such as `/tmp`: there a local
//! user can create the name first (a fixed or guessable one) and the shim
//! would use their directory, handing them a container's terminal or making
//! root mount over a path of their choice through a planted symlink. So each
//! scratch directory is made with an unpredictable name by `mkdir` (which
//! never follows a symlink and fails on what exists), mode 0700, inside
//! [`ROOT`], a root-owned 0700 directory the shim creates and checks.

use std::{
    io,
    os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
};

/// The shim's runtime directory: short, so a socket path inside it stays
/// far under the 108-byte limit of a unix socket address.
pub const ROOT: &str = "/run/brisk";

#[derive(Debug, thiserror::Error)]
pub enum PrivateDirError {
    #[error("private directory {dir}: {reason}")]
    Unsafe { dir: PathBuf, reason: String },

    #[error("private directory {dir}: {context}: {source}")]
    Io {
        dir: PathBuf,
        context: &'static str,
        #[source]
        source: io::Error,
    },
}

/// A new private directory in [`ROOT`], named `<prefix><random>`; removed
/// (without following symlinks) when dropped.
pub fn scratch(prefix: &str) -> Result<tempfile::TempDir, PrivateDirError> {
    scratch_in(Path::new(ROOT), prefix)
}

/// The same in `root`, which is created or checked as [`ensure_root`] does.
pub fn scratch_in(root: &Path, prefix: &str) -> Result<tempfile::TempDir, PrivateDirError> {
    ensure_root(root)?;
    tempfile::Builder::new()
        .prefix(prefix)
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir_in(root)
        .map_err(|source| PrivateDirError::Io {
            dir: root.to_path_buf(),
            context: "create a scratch directory",
            source,
        })
}

/// Creates `root` mode 0700 if missing (its parent must exist), then checks
/// what is there without following a symlink: a directory, owned by the
/// shim's uid, closed to group and others. Anything else is refused, never
/// repaired: whoever could make it so may have put things inside.
pub fn ensure_root(root: &Path) -> Result<(), PrivateDirError> {
    let bad = |reason: String| PrivateDirError::Unsafe {
        dir: root.to_path_buf(),
        reason,
    };
    match std::fs::DirBuilder::new().mode(0o700).create(root) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(source) => {
            return Err(PrivateDirError::Io {
                dir: root.to_path_buf(),
                context: "create",
                source,
            })
        }
    }
    let meta = std::fs::symlink_metadata(root).map_err(|source| PrivateDirError::Io {
        dir: root.to_path_buf(),
        context: "stat",
        source,
    })?;
    match unsafe_because(&meta, 0o077, "opens it to group or others; it must be 0700") {
        Some(reason) => Err(bad(reason)),
        None => Ok(()),
    }
}

/// Why a directory, from its `lstat`, is not one only the shim's user can
/// change: a symlink, not a directory, another owner, or any of the mode
/// bits `forbidden` set (`why_mode` says what that opens). None when safe.
pub fn unsafe_because(meta: &std::fs::Metadata, forbidden: u32, why_mode: &str) -> Option<String> {
    if meta.file_type().is_symlink() {
        return Some("is a symlink".into());
    }
    if !meta.is_dir() {
        return Some("is not a directory".into());
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if meta.uid() != euid {
        return Some(format!(
            "is owned by uid {}, not by the shim's uid {euid}",
            meta.uid()
        ));
    }
    let mode = meta.permissions().mode() & 0o7777;
    (mode & forbidden != 0).then(|| format!("mode {mode:04o} {why_mode}"))
}

/// Test planting: removes what a test planted, also when an assertion fails.
#[cfg(test)]
pub(crate) struct RemoveOnDrop(pub Vec<std::path::PathBuf>);

#[cfg(test)]
impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        for p in &self.0 {
            match std::fs::symlink_metadata(p) {
                Ok(m) if m.is_dir() => {
                    let _ = std::fs::remove_dir_all(p);
                }
                Ok(_) => {
                    let _ = std::fs::remove_file(p);
                }
                Err(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn scratch_dirs_are_0700_unpredictable_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("brisk");
        let a = scratch_in(&root, "pty-").unwrap();
        let b = scratch_in(&root, "pty-").unwrap();
        assert_eq!(mode(&root), 0o700);
        assert_eq!(mode(a.path()), 0o700);
        assert_ne!(a.path(), b.path());
        assert!(a.path().starts_with(&root));
        let name = a.path().file_name().unwrap().to_str().unwrap();
        assert!(name.len() > "pty-".len() + 4, "{name}");
        let p = a.path().to_path_buf();
        drop(a);
        assert!(!p.exists());
    }

    #[test]
    fn a_root_open_to_others_or_a_symlink_or_foreign_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = scratch_in(&open, "x-").unwrap_err().to_string();
        assert!(e.contains("mode 0755"), "{e}");
        assert_eq!(std::fs::read_dir(&open).unwrap().count(), 0);

        let target = dir.path().join("target");
        std::fs::create_dir(&target).unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o700)).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let e = scratch_in(&link, "x-").unwrap_err().to_string();
        assert!(e.contains("symlink"), "{e}");
        assert_eq!(std::fs::read_dir(&target).unwrap().count(), 0);

        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } == 0 {
            let foreign = dir.path().join("foreign");
            std::fs::create_dir(&foreign).unwrap();
            std::fs::set_permissions(&foreign, std::fs::Permissions::from_mode(0o700)).unwrap();
            std::os::unix::fs::chown(&foreign, Some(65534), Some(65534)).unwrap();
            let e = scratch_in(&foreign, "x-").unwrap_err().to_string();
            assert!(e.contains("owned by uid 65534"), "{e}");
            assert_eq!(std::fs::read_dir(&foreign).unwrap().count(), 0);
        }
    }
}
