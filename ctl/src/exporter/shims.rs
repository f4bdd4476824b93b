//! Finding the node's brisk shims and reading their figures.
//!
//! containerd keeps one task directory per container under its state dir,
//! `io.containerd.runtime.v2.task/<namespace>/<id>/`, each with an `address`
//! file naming the shim's ttrpc socket. A brisk shim serves its figures on
//! `<that socket>.metrics` (`brisk_shim::metrics_socket`); other shims have
//! no such socket and are not counted. Containers of one pod share a shim,
//! and so an address: each shim is read once.

use std::{
    collections::BTreeSet,
    io::Read,
    os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use brisk_shim::{metrics::Snapshot, metrics_socket, shim_socket};
use tokio::io::AsyncReadExt;

/// An `address` file is a line; anything longer is not one.
const MAX_ADDRESS: u64 = 4096;
/// A snapshot is a few kilobytes; a bound keeps a broken shim from
/// filling the exporter's memory.
const MAX_SNAPSHOT: u64 = 1 << 20;

/// What reading one shim gave.
#[derive(Debug)]
pub enum Read1 {
    Read {
        socket: PathBuf,
        snapshot: Box<Snapshot>,
    },
    /// The socket is there, but the shim did not answer in time, or
    /// answered something that is no snapshot.
    Failed { socket: PathBuf, reason: String },
}

/// The figures sockets of the shims of the tasks under `state`, each once.
pub fn figures_sockets(state: &Path) -> Vec<PathBuf> {
    let tasks = state.join("io.containerd.runtime.v2.task");
    let mut sockets = BTreeSet::new();
    for ns in dirs_in(&tasks) {
        for task in dirs_in(&ns) {
            let Some(address) = read_address(&task.join("address")) else {
                continue;
            };
            let shim = shim_socket::path_of(&address);
            if !shim.is_absolute() {
                continue;
            }
            let figures = metrics_socket::path_for(&shim);
            if is_roots_socket(&figures) {
                sockets.insert(figures);
            }
        }
    }
    sockets.into_iter().collect()
}

/// The directories in `dir`, not following symlinks.
fn dirs_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect()
}

/// The `address` file's text; a symlink there is not followed.
fn read_address(path: &Path) -> Option<String> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .ok()?;
    let mut text = String::new();
    file.take(MAX_ADDRESS).read_to_string(&mut text).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_string())
}

/// A socket file owned by root, looked at without following a symlink.
fn is_roots_socket(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket() && m.uid() == 0)
}

/// Reads the snapshot at `socket`, giving up after `timeout` in all: a
/// hung shim costs the scrape at most that, never more.
pub async fn read(socket: PathBuf, timeout: Duration) -> Read1 {
    let fail = |socket: PathBuf, reason: String| Read1::Failed { socket, reason };
    let work = async {
        let stream = tokio::net::UnixStream::connect(&socket).await?;
        let mut body = Vec::new();
        stream.take(MAX_SNAPSHOT).read_to_end(&mut body).await?;
        Ok::<_, std::io::Error>(body)
    };
    match tokio::time::timeout(timeout, work).await {
        Err(_) => fail(socket, format!("no answer within {timeout:?}")),
        Ok(Err(e)) => fail(socket, e.to_string()),
        Ok(Ok(body)) => match serde_json::from_slice::<Snapshot>(&body) {
            Ok(s) => Read1::Read {
                socket,
                snapshot: Box::new(s),
            },
            Err(e) => fail(socket, format!("not a snapshot: {e}")),
        },
    }
}

/// Reads every shim under `state` at once, each within `timeout`.
pub async fn read_all(state: &Path, timeout: Duration) -> (Vec<Read1>, Duration) {
    let started = Instant::now();
    let reads: Vec<_> = figures_sockets(state)
        .into_iter()
        .map(|s| tokio::spawn(read(s, timeout)))
        .collect();
    let mut out = Vec::with_capacity(reads.len());
    for r in reads {
        if let Ok(r) = r.await {
            out.push(r);
        }
    }
    (out, started.elapsed())
}

/// The resident set of process `pid`, in bytes (`/proc/<pid>/statm`).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf only reads a system constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::DirBuilderExt;

    use super::*;

    #[test]
    fn shims_are_found_once_and_other_shims_and_symlinks_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let s = dir.path().join("s");
        std::fs::DirBuilder::new().mode(0o700).create(&s).unwrap();
        let tasks = state.join("io.containerd.runtime.v2.task/k8s.io");
        let brisk = s.join("aaaa");
        let stock = s.join("bbbb");
        let _figures =
            std::os::unix::net::UnixListener::bind(metrics_socket::path_for(&brisk)).unwrap();
        for (id, shim) in [("c1", &brisk), ("c2", &brisk), ("c3", &stock)] {
            let t = tasks.join(id);
            std::fs::create_dir_all(&t).unwrap();
            std::fs::write(t.join("address"), shim_socket::address_of(shim)).unwrap();
        }
        // A symlinked address file is not read.
        let t = tasks.join("c4");
        std::fs::create_dir_all(&t).unwrap();
        std::os::unix::fs::symlink(tasks.join("c1/address"), t.join("address")).unwrap();
        std::fs::remove_file(tasks.join("c1/address")).unwrap();
        std::fs::remove_file(tasks.join("c2/address")).unwrap();
        assert!(figures_sockets(&state).is_empty());
        std::fs::write(tasks.join("c2/address"), shim_socket::address_of(&brisk)).unwrap();
        assert_eq!(
            figures_sockets(&state),
            vec![metrics_socket::path_for(&brisk)]
        );
    }

    #[tokio::test]
    async fn a_shim_that_does_not_answer_fails_within_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hung.metrics");
        // Listening, never accepting nor writing: a hung shim.
        let _l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let started = Instant::now();
        let r = read(path, Duration::from_millis(300)).await;
        assert!(matches!(r, Read1::Failed { .. }), "{r:?}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn own_rss_is_read() {
        assert!(rss_bytes(std::process::id()).unwrap() > 0);
    }
}
