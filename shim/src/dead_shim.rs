//! `containerd-shim-brisk-v2 delete`: containerd runs it whenever its
//! connection for a task closes, which includes every normal Delete, and
//! waits for it before it reports the exit. Only a dead shim leaves work
//! behind: its runc state and rootfs mount, removed here with the settings
//! saved at Create. A live pod shim removes a container's runc state itself
//! (at the exit, see `detached`), so nothing is asked of runc then: a second
//! `runc delete` would race the shim's own and cost containerd a runc start
//! on every exit.
//!
//! Whether the pod's shim lives is asked of the shim itself: a socket
//! that accepts a connection proves nothing. A killed process releases its
//! files one after the other, the last opened first, so the shim's
//! connections close (and containerd runs this command for each task)
//! while its listening socket, opened first, still accepts for a moment,
//! longer on a loaded node; the connection then waits in the backlog and
//! nobody answers. Only a shim that answers a call is alive.
//!
//! containerd gives this command 5 s (`io.containerd.timeout.shim.cleanup`)
//! and then kills it, and nobody runs it again while containerd runs: what
//! it has not removed by then stays. So runc gets a bound of its own, and a
//! `runc delete --force` that fails or hangs (a loaded node, a runc hung
//! past its timeout) is followed by what it would have done, by hand: the
//! container's processes killed through its cgroups, the cgroups and runc's
//! state directory removed.

use std::{
    io::Write,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use containerd_shim::util::convert_to_timestamp;
use containerd_shim_protos::{
    api::{ConnectRequest, DeleteResponse},
    protobuf::{Message, MessageField},
    shim_async::{Client, TaskClient},
    ttrpc,
};
use runc_wrapper::{DirectWait, Runc};
use tracing::{info, warn};

use crate::{
    bundle_spec::BundleSpec,
    cgroup,
    config::RuntimeConfig,
    error::{Result, ShimError},
    metrics_socket, rootfs, runc_leftovers,
    shim_socket::{self, Probe},
    unmount,
};

/// The longest `runc delete --force` may take here: with the wait for the
/// shim's answer before it, the removal by hand after it and the unmount,
/// the cleanup stays within the 5 s containerd gives it.
const RUNC_BOUND: Duration = Duration::from_millis(1500);

/// How long a shim whose socket accepts has to answer. A live brisk shim
/// answers Connect at once (no call waits on a lock held across I/O). A
/// dying one's pending connection is reset as soon as its listener is
/// released, so this wait is only spent in full on a shim so wedged that
/// its containers are no better off than a dead shim's; its socket is
/// left to it all the same (removed only once nothing accepts there).
const ANSWER_WAIT: Duration = Duration::from_secs(1);

/// Cleans up after the shim of `id` in `bundle` if it died, and prints the
/// `DeleteResponse` containerd reads.
pub async fn run(namespace: &str, id: &str, bundle: &Path) -> Result<()> {
    cleanup(namespace, id, bundle).await?;
    let response = DeleteResponse {
        pid: 0,
        // The stock shim reports a container whose shim died as SIGKILLed.
        exit_status: 128 + libc::SIGKILL as u32,
        exited_at: MessageField::some(convert_to_timestamp(Some(SystemTime::now().into()))),
        ..Default::default()
    };
    let bytes = response
        .write_to_bytes()
        .map_err(|e| ShimError::Other(e.to_string()))?;
    let mut out = std::io::stdout().lock();
    out.write_all(&bytes)
        .and_then(|()| out.flush())
        .map_err(|e| ShimError::io("write stdout", e))
}

async fn cleanup(namespace: &str, id: &str, bundle: &Path) -> Result<()> {
    // Both become path components below (runc's root, its state directory).
    crate::identifiers::validate("container id", id)?;
    crate::identifiers::validate("namespace", namespace)?;
    let socket = bundle_socket(bundle);
    if let Some((path, Probe::Served)) = &socket {
        if shim_answers(path, id).await {
            info!(id, socket = %path.display(), "the pod's shim still serves; it cleans up after the container");
            return Ok(());
        }
        warn!(id, socket = %path.display(), "the pod's shim socket accepts but nobody answers: cleaning up as after a dead shim");
    }
    let cfg = RuntimeConfig::load_saved(bundle, namespace);
    let bound = RUNC_BOUND.min(Duration::from_secs(cfg.runc_timeout_secs));
    let runc = Runc::new(&cfg.runc_binary, &cfg.runc_root, Arc::new(DirectWait))
        .with_systemd_cgroup(cfg.systemd_cgroup)
        .with_timeout(bound);
    let state = runc.root().join(id);
    if state.exists() {
        match runc.delete(id, true).await {
            Ok(()) => info!(id, "runc state removed"),
            Err(e) if e.is_not_found() => info!(id, "no runc state left"),
            Err(e) => {
                warn!(id, error = %e, "runc delete --force failed; removing the container by hand");
                remove_by_hand(id, bundle, state, cfg.systemd_cgroup).await;
            }
        }
    } else {
        info!(id, "no runc state left");
    }
    let target = rootfs::rootfs_of(bundle);
    tokio::task::spawn_blocking(move || unmount::unmount_all(&target))
        .await
        .map_err(|e| ShimError::Other(e.to_string()))??;
    let Some((path, _)) = socket else {
        return Ok(());
    };
    // Judged again: a listener that still accepted above is gone once its
    // dying shim is. Another container's cleanup may have removed the
    // socket already (Absent).
    let probe = shim_socket::probe(&path).ok();
    if probe == Some(Probe::Dead) {
        remove_dead_socket(&path);
    }
    // Its figures socket too, once nobody serves it.
    let figures = metrics_socket::path_for(&path);
    if probe != Some(Probe::Served) && shim_socket::probe(&figures).ok() == Some(Probe::Dead) {
        remove_dead_socket(&figures);
    }
    Ok(())
}

/// Whether a shim answers a Connect for `id` on the socket at `path` within
/// [`ANSWER_WAIT`]. Any answer counts, an error status too (a container it
/// deleted already is NotFound): only a live shim gives one.
async fn shim_answers(path: &Path, id: &str) -> bool {
    let address = shim_socket::address_of(path);
    let ask = async {
        let client = Client::connect(&address).await?;
        let request = ConnectRequest {
            id: id.to_string(),
            ..Default::default()
        };
        TaskClient::new(client)
            .connect(ttrpc::context::Context::default(), &request)
            .await
    };
    match tokio::time::timeout(ANSWER_WAIT, ask).await {
        Ok(Ok(_)) | Ok(Err(ttrpc::Error::RpcStatus(_))) => true,
        Ok(Err(_)) | Err(_) => false,
    }
}

/// What `runc delete --force` does, for when runc cannot: kill the
/// container's processes through its cgroups (the spec in the bundle says
/// where they are) and remove them, then runc's state directory, with any
/// mount a killed runc left in it. A hung runc that goes on later finds
/// nothing left to delete.
async fn remove_by_hand(id: &str, bundle: &Path, state: PathBuf, systemd: bool) {
    let cgroups_path = match BundleSpec::load(bundle) {
        Ok(spec) => spec.cgroups_path().map(str::to_string),
        Err(e) => {
            warn!(id, error = %e, "the container's cgroups are unknown; left");
            None
        }
    };
    let id = id.to_string();
    let done = tokio::task::spawn_blocking(move || {
        if let Some(path) = cgroups_path {
            cgroup::remove_leftover(&path, systemd);
        }
        runc_leftovers::unmount_under(&state);
        match std::fs::remove_dir_all(&state) {
            Ok(()) => info!(id, state = %state.display(), "runc state removed by hand"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => warn!(id, state = %state.display(), error = %e, "runc state not removed"),
        }
    })
    .await;
    if let Err(e) = done {
        warn!(error = %e, "removal by hand ended early");
    }
}

fn remove_dead_socket(path: &Path) {
    match shim_socket::remove(path) {
        Ok(_) => info!(socket = %path.display(), "removed the dead shim's socket"),
        Err(e) => {
            warn!(socket = %path.display(), error = %e, "cannot remove the dead shim's socket")
        }
    }
}

/// The pod shim's socket named by the bundle's `address` file, and what is
/// there; None without an address or when the socket cannot be judged.
fn bundle_socket(bundle: &Path) -> Option<(PathBuf, Probe)> {
    let address = std::fs::read_to_string(bundle.join("address")).ok()?;
    let path = shim_socket::path_of(&address);
    if path.as_os_str().is_empty() {
        return None;
    }
    match shim_socket::probe(&path) {
        Ok(p) => Some((path, p)),
        Err(e) => {
            warn!(socket = %path.display(), error = %e, "shim socket neither served nor refused, kept");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use containerd_shim_protos::shim_async::{create_task, Task};
    use ttrpc::asynchronous::{transport::Listener, Server};

    use super::*;

    /// What a dying shim's socket is for a moment: it accepts, and nobody
    /// ever answers.
    #[tokio::test]
    async fn a_socket_that_accepts_but_never_answers_is_no_live_shim() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shim.sock");
        let _held = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert_eq!(shim_socket::probe(&path).unwrap(), Probe::Served);
        let asked = Instant::now();
        assert!(!shim_answers(&path, "c1").await);
        assert!(asked.elapsed() < ANSWER_WAIT + Duration::from_millis(500));
    }

    struct Answers;
    impl Task for Answers {}

    /// Any answer is a live shim's, an error status too (here every call
    /// is Unimplemented).
    #[tokio::test]
    async fn a_shim_that_answers_even_with_an_error_is_alive() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shim.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        listener.set_nonblocking(true).unwrap();
        let mut server = Server::new()
            .add_listener(Listener::try_from(listener).unwrap())
            .register_service(create_task(Arc::new(Answers)));
        server.start().await.unwrap();
        assert!(shim_answers(&path, "c1").await);
        let _ = server.shutdown().await;
    }
}
