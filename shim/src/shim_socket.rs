//! The pod shim's ttrpc socket: where it lives, how `start` creates it, and
//! how a later `start` or `delete` tells a live shim from a dead one.
//!
//! The socket is a path in a directory of containerd's (`/run/containerd/s`
//! by default, or the `socket_dir` containerd 2.3 passes), never an abstract
//! socket: an abstract socket is reachable from every process in the host's
//! network namespace, whatever its user (CVE-2020-15257). The socket is
//! created mode 0600 in a directory that must be root's and closed to
//! others, so only root can connect.

use std::{
    io,
    os::unix::{
        fs::{DirBuilderExt, FileTypeExt, PermissionsExt},
        net::{UnixListener, UnixStream},
    },
    path::{Path, PathBuf},
};

use sha2::{Digest, Sha256};

/// Where containerd's shims put their sockets unless told otherwise.
pub const DEFAULT_SOCKET_DIR: &str = "/run/containerd/s";

/// `sockaddr_un.sun_path` holds 108 bytes, the terminating NUL included.
const MAX_SOCKET_PATH: usize = 107;

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("socket directory {dir}: {reason}")]
    Directory { dir: PathBuf, reason: String },

    #[error("socket path {path} is {len} bytes, over the {MAX_SOCKET_PATH}-byte limit of a unix socket; use a shorter socket_dir")]
    TooLong { path: PathBuf, len: usize },

    #[error("{path} exists and is not a socket; refusing to replace it")]
    NotASocket { path: PathBuf },

    #[error("shim socket {path}: {context}: {source}")]
    Io {
        path: PathBuf,
        context: &'static str,
        #[source]
        source: io::Error,
    },
}

/// The socket of the shim serving `group` for the containerd at
/// `containerd_address` in `namespace`: a hash of the three, so each pod of
/// each containerd instance gets its own short, fixed-length name.
pub fn socket_path(dir: &Path, containerd_address: &str, namespace: &str, group: &str) -> PathBuf {
    let key = Path::new(containerd_address).join(namespace).join(group);
    let digest = Sha256::digest(key.as_os_str().as_encoded_bytes());
    let name: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    dir.join(name)
}

/// `unix://PATH`, the form containerd takes.
pub fn address_of(path: &Path) -> String {
    format!("unix://{}", path.display())
}

/// The path of a `unix://` address (or of a bare path).
pub fn path_of(address: &str) -> PathBuf {
    PathBuf::from(address.trim().trim_start_matches("unix://"))
}

/// What `start` found at the socket path.
#[derive(Debug)]
pub enum Claim {
    /// A new socket, bound and listening, for the shim that `start` launches.
    Bound(UnixListener),
    /// A shim already serves the path: the pod has its shim.
    Served,
}

/// Binds the shim socket at `path`, or finds the shim that already serves
/// it. A socket file whose shim died (connections refused) is replaced.
pub fn claim(path: &Path) -> Result<Claim, SocketError> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    // A relative directory (a socket_dir from the bootstrap parameters)
    // would bind in the bundle and yield an address that is no `unix:///`.
    if !path.is_absolute() {
        return Err(SocketError::Directory {
            dir: dir.to_path_buf(),
            reason: "is not an absolute path".into(),
        });
    }
    let len = path.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        return Err(SocketError::TooLong {
            path: path.to_path_buf(),
            len,
        });
    }
    ensure_private_dir(dir)?;
    // Twice at most: a shim that died left its socket, which is removed once.
    for _ in 0..2 {
        match probe(path)? {
            Probe::Served => return Ok(Claim::Served),
            Probe::Dead => remove_dead(path)?,
            Probe::Absent => {}
        }
        match bind_private(path) {
            Ok(l) => return Ok(Claim::Bound(l)),
            // Another start bound it since the probe; look again.
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => continue,
            Err(source) => {
                return Err(SocketError::Io {
                    path: path.to_path_buf(),
                    context: "bind",
                    source,
                })
            }
        }
    }
    match probe(path)? {
        Probe::Served => Ok(Claim::Served),
        _ => Err(SocketError::Io {
            path: path.to_path_buf(),
            context: "bind",
            source: io::Error::from(io::ErrorKind::AddrInUse),
        }),
    }
}

/// What is at a socket path.
#[derive(Debug, PartialEq, Eq)]
pub enum Probe {
    /// Nothing.
    Absent,
    /// A socket that accepts connections.
    Served,
    /// A socket file nobody listens on (its shim died).
    Dead,
}

/// Looks at `path` without following a symlink there.
pub fn probe(path: &Path) -> Result<Probe, SocketError> {
    let io_err = |context, source| SocketError::Io {
        path: path.to_path_buf(),
        context,
        source,
    };
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Probe::Absent),
        Err(e) => return Err(io_err("stat", e)),
    };
    if !meta.file_type().is_socket() {
        return Err(SocketError::NotASocket {
            path: path.to_path_buf(),
        });
    }
    match UnixStream::connect(path) {
        Ok(_) => Ok(Probe::Served),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Ok(Probe::Dead),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Probe::Absent),
        Err(e) => Err(io_err("connect", e)),
    }
}

fn remove_dead(path: &Path) -> Result<(), SocketError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(SocketError::Io {
            path: path.to_path_buf(),
            context: "remove the dead shim's socket",
            source,
        }),
    }
}

/// Removes the socket file at `path` if it is one (a shim's exit, or the
/// cleanup after a dead shim). Gone already is fine.
pub fn remove(path: &Path) -> io::Result<bool> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => match std::fs::remove_file(path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        },
        Ok(_) => Err(io::Error::other(format!(
            "{} is not a socket",
            path.display()
        ))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Creates `dir` (mode 0700) if missing; refuses one that is a symlink, not
/// a directory, not ours, or writable by others, since whoever can write
/// there can swap a pod's socket for their own.
fn ensure_private_dir(dir: &Path) -> Result<(), SocketError> {
    let bad = |reason: String| SocketError::Directory {
        dir: dir.to_path_buf(),
        reason,
    };
    match std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Ok(()) => {}
        Err(e) => return Err(bad(format!("create: {e}"))),
    }
    let meta = std::fs::symlink_metadata(dir).map_err(|e| bad(format!("stat: {e}")))?;
    match crate::private_dir::unsafe_because(&meta, 0o022, "lets others write to it") {
        Some(reason) => Err(bad(reason)),
        None => Ok(()),
    }
}

/// Binds a listening socket at `path`, mode 0600. The umask covers the
/// moment between bind and chmod; this runs in the single-threaded `start`
/// process, where nothing else creates files meanwhile.
fn bind_private(path: &Path) -> io::Result<UnixListener> {
    // SAFETY: umask only swaps the process's file creation mask.
    let old = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(path);
    // SAFETY: as above, restoring the previous mask.
    unsafe { libc::umask(old) };
    let listener = bound?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_is_a_hash_in_the_directory() {
        let p = socket_path(
            Path::new("/run/containerd/s"),
            "/run/containerd/containerd.sock",
            "k8s.io",
            "pod1",
        );
        assert_eq!(p.parent(), Some(Path::new("/run/containerd/s")));
        assert_eq!(p.file_name().unwrap().len(), 64);
        let other = socket_path(
            Path::new("/run/containerd/s"),
            "/run/containerd/containerd.sock",
            "k8s.io",
            "pod2",
        );
        assert_ne!(p, other);
        assert_eq!(path_of(&address_of(&p)), p);
    }

    #[test]
    fn claim_binds_0600_then_finds_the_live_shim_then_replaces_a_dead_one() {
        let dir = tempfile::tempdir().unwrap();
        let sockets = dir.path().join("s");
        let path = sockets.join("x");
        let Claim::Bound(listener) = claim(&path).unwrap() else {
            panic!("first claim binds")
        };
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&sockets), 0o700);
        assert!(matches!(claim(&path).unwrap(), Claim::Served));
        drop(listener);
        assert_eq!(probe(&path).unwrap(), Probe::Dead);
        assert!(matches!(claim(&path).unwrap(), Claim::Bound(_)));
    }

    /// CVE-2020-15257: an abstract socket is reachable by every user of
    /// the network namespace. The address containerd gets is `unix:///` and
    /// a socket file on disk, mode 0600 in a 0700 directory, both set
    /// explicitly whatever the umask.
    #[test]
    fn the_socket_is_a_file_0600_in_0700_whatever_the_umask_never_abstract() {
        let dir = tempfile::tempdir().unwrap();
        let sockets = dir.path().join("s");
        let path = socket_path(&sockets, "/run/containerd/containerd.sock", "k8s.io", "pod");
        // SAFETY: umask only swaps the process's file creation mask.
        let old = unsafe { libc::umask(0) };
        let claimed = claim(&path);
        // SAFETY: as above, restoring it.
        unsafe { libc::umask(old) };
        let Claim::Bound(listener) = claimed.unwrap() else {
            panic!("first claim binds")
        };
        let address = address_of(&path);
        assert!(address.starts_with("unix:///"), "{address}");
        assert!(
            !address.contains('@') && !address.starts_with("unix://\0"),
            "{address}"
        );
        let local = listener.local_addr().unwrap();
        assert_eq!(local.as_pathname(), Some(path.as_path()));
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
        let dmode = std::fs::symlink_metadata(&sockets)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dmode & 0o7777, 0o700);

        let err = claim(Path::new("relative/s/x")).unwrap_err();
        assert!(err.to_string().contains("not an absolute path"), "{err}");
        assert!(!Path::new("relative").exists());
    }

    #[test]
    fn claim_refuses_what_is_not_a_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        std::os::unix::fs::symlink("/etc/passwd", &path).unwrap();
        let err = claim(&path).unwrap_err();
        assert!(matches!(err, SocketError::NotASocket { .. }), "{err}");
        assert!(std::fs::symlink_metadata(&path).unwrap().is_symlink());
    }

    #[test]
    fn claim_refuses_a_directory_others_can_write() {
        let dir = tempfile::tempdir().unwrap();
        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = claim(&open.join("x")).unwrap_err();
        assert!(err.to_string().contains("lets others write"), "{err}");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&open, &link).unwrap();
        let err = claim(&link.join("x")).unwrap_err();
        assert!(err.to_string().contains("symlink"), "{err}");
    }

    #[test]
    fn too_long_a_path_is_named() {
        let long = Path::new("/run").join("d".repeat(60)).join("e".repeat(64));
        let err = claim(&long).unwrap_err();
        assert!(matches!(err, SocketError::TooLong { .. }), "{err}");
    }
}
