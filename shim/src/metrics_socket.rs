//! Where `brisk-ctl exporter` reads a shim's figures: a second unix socket
//! beside the shim's ttrpc socket, named `<ttrpc socket>.metrics`. A client
//! connects, gets one JSON [`Snapshot`](crate::metrics::Snapshot) and EOF;
//! it sends nothing.
//!
//! The socket lives in the shim socket directory, which `start` made or
//! checked root's and closed to others (`shim_socket::claim`), and which is
//! checked again here; the socket is mode 0600. So only root can read the
//! figures, and nobody else can put a socket there. It is served from the
//! shim's runtime, one short task per connection with a write deadline, so
//! a client that does not read never holds up the shim or other clients.

use std::{
    io,
    os::unix::fs::{FileTypeExt, PermissionsExt},
    path::{Path, PathBuf},
    time::Duration,
};

use tokio::{io::AsyncWriteExt, net::UnixListener};
use tracing::{debug, warn};

use crate::metrics::FIGURES;

/// How long one client gets to take its snapshot.
const WRITE_DEADLINE: Duration = Duration::from_secs(1);

/// The suffix of the figures socket's name after the ttrpc socket's.
pub const SUFFIX: &str = ".metrics";

#[derive(Debug, thiserror::Error)]
pub enum MetricsSocketError {
    #[error("metrics socket {path}: the directory {reason}")]
    Directory { path: PathBuf, reason: String },

    #[error("metrics socket {path}: {context}: {source}")]
    Io {
        path: PathBuf,
        context: &'static str,
        #[source]
        source: io::Error,
    },
}

/// The figures socket of the shim whose ttrpc socket is `shim_socket`.
pub fn path_for(shim_socket: &Path) -> PathBuf {
    let mut name = shim_socket.as_os_str().to_owned();
    name.push(SUFFIX);
    PathBuf::from(name)
}

/// A bound figures socket, removed on drop.
pub struct MetricsSocket {
    path: PathBuf,
}

impl MetricsSocket {
    /// Binds the figures socket for `shim_socket` and serves snapshots
    /// (labelled with `namespace` and `id`) on the current runtime until
    /// the process exits. A stale socket of a dead shim at the same path
    /// (this shim owns the ttrpc socket beside it) is replaced.
    pub fn serve(
        shim_socket: &Path,
        namespace: String,
        id: String,
    ) -> Result<Self, MetricsSocketError> {
        let path = path_for(shim_socket);
        let io_err = |context, source| MetricsSocketError::Io {
            path: path.clone(),
            context,
            source,
        };
        let dir = path.parent().unwrap_or(Path::new("/"));
        let meta = std::fs::symlink_metadata(dir).map_err(|e| io_err("stat the directory", e))?;
        if let Some(reason) = crate::private_dir::unsafe_because(&meta, 0o077, "is open to others")
        {
            return Err(MetricsSocketError::Directory {
                path: path.clone(),
                reason,
            });
        }
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_socket() => {
                std::fs::remove_file(&path).map_err(|e| io_err("remove the stale socket", e))?
            }
            Ok(_) => {
                return Err(io_err(
                    "refusing to replace it",
                    io::Error::other("exists and is not a socket"),
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("stat", e)),
        }
        // No umask games (the process has threads): the directory is root's
        // and closed to others, so nobody can reach the socket before the
        // chmod.
        let listener = UnixListener::bind(&path).map_err(|e| io_err("bind", e))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| io_err("chmod 0600", e))?;
        tokio::spawn(accept_all(listener, namespace, id));
        Ok(MetricsSocket { path })
    }
}

impl Drop for MetricsSocket {
    fn drop(&mut self) {
        if let Err(e) = crate::shim_socket::remove(&self.path) {
            warn!(socket = %self.path.display(), error = %e, "cannot remove the metrics socket");
        }
    }
}

async fn accept_all(listener: UnixListener, namespace: String, id: String) {
    loop {
        let mut stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // EMFILE and the like: the next accept may work; the ttrpc
                // service does not depend on this one.
                debug!(error = %e, "metrics socket accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let body = match serde_json::to_vec(&FIGURES.snapshot(&namespace, &id)) {
            Ok(b) => b,
            Err(e) => {
                warn!(error = %e, "cannot encode the figures");
                continue;
            }
        };
        tokio::spawn(async move {
            let sent = tokio::time::timeout(WRITE_DEADLINE, async {
                stream.write_all(&body).await?;
                stream.shutdown().await
            })
            .await;
            match sent {
                Ok(Ok(())) => {}
                Ok(Err(e)) => debug!(error = %e, "metrics client went away"),
                Err(_) => debug!("metrics client did not read its snapshot in time"),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::DirBuilderExt;

    use tokio::io::AsyncReadExt;

    use super::*;

    #[tokio::test]
    async fn a_client_gets_one_snapshot_from_a_0600_socket() {
        let dir = tempfile::tempdir().unwrap();
        let sockets = dir.path().join("s");
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&sockets)
            .unwrap();
        let shim = sockets.join("abc");
        // A dead shim's leftover is replaced.
        drop(std::os::unix::net::UnixListener::bind(path_for(&shim)).unwrap());
        let served = MetricsSocket::serve(&shim, "ns".into(), "pod".into()).unwrap();
        let path = path_for(&shim);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let mut s = tokio::net::UnixStream::connect(&path).await.unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).await.unwrap();
        let snap: crate::metrics::Snapshot = serde_json::from_str(&body).unwrap();
        assert_eq!((snap.namespace.as_str(), snap.id.as_str()), ("ns", "pod"));
        assert_eq!(snap.pid, std::process::id());
        assert_eq!(snap.buckets.len(), crate::metrics::BUCKETS.len());
        drop(served);
        assert!(!path.exists(), "removed on drop");
    }

    #[tokio::test]
    async fn a_directory_open_to_others_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let sockets = dir.path().join("s");
        std::fs::DirBuilder::new()
            .mode(0o755)
            .create(&sockets)
            .unwrap();
        std::fs::set_permissions(&sockets, std::fs::Permissions::from_mode(0o755)).unwrap();
        let err = MetricsSocket::serve(&sockets.join("abc"), "ns".into(), "pod".into())
            .err()
            .expect("refused");
        assert!(matches!(err, MetricsSocketError::Directory { .. }), "{err}");
    }
}
