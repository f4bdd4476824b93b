//! The long-running pod shim: serves the Task API on the socket `start`
//! bound and handed over as fd 3, until containerd's Shutdown says the pod
//! has no containers left.

use std::{
    os::{
        fd::{FromRawFd, OwnedFd, RawFd},
        unix::{fs::FileTypeExt, net::UnixListener},
    },
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use containerd_shim::{asynchronous::ExitSignal, Flags};
use containerd_shim_protos::{
    shim_async::create_task,
    ttrpc::r#async::{transport::Listener, Server},
};
use tracing::{debug, info, warn};

use crate::{
    detached::Detached, events::EventSink, metrics, metrics_socket::MetricsSocket, reaper::Reaper,
    shim_socket, start::LISTENER_FD, task_service::TaskService,
};

/// How long a shim that was told to exit waits for detached unmounts.
const UNMOUNT_GRACE: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("no -socket flag: the shim serves only when launched by `start`")]
    NoSocket,

    #[error(
        "fd {LISTENER_FD} is not the listening socket {path} (the shim serves only when \
         launched by `start`): {reason}"
    )]
    NoListener { path: PathBuf, reason: String },

    #[error("no TTRPC_ADDRESS: containerd's ttrpc socket, for events, is unknown")]
    NoTtrpcAddress,

    #[error("{context}: {reason}")]
    Setup {
        context: &'static str,
        reason: String,
    },
}

/// Serves until told to exit. Runs on the runtime that `main` built.
pub async fn run(flags: Flags) -> Result<(), ServeError> {
    if flags.socket.is_empty() {
        return Err(ServeError::NoSocket);
    }
    let socket = shim_socket::path_of(&flags.socket);
    let listener = take_listener(&socket)?;
    let ttrpc_address = std::env::var("TTRPC_ADDRESS")
        .ok()
        .filter(|a| !a.is_empty())
        .ok_or(ServeError::NoTtrpcAddress)?;
    become_subreaper()?;

    let reaper = Reaper::start().map_err(|e| setup("install the SIGCHLD handler", e))?;
    ignore_termination_signals()?;
    let exit = Arc::new(ExitSignal::default());
    let detached = Detached::default();
    let events = EventSink::new(ttrpc_address, flags.namespace.clone());
    let task = TaskService::new(
        flags.namespace.clone(),
        reaper,
        events,
        exit.clone(),
        detached.clone(),
    );
    let listener = Listener::try_from(listener).map_err(|e| setup("ttrpc listener", e))?;
    let mut server = Server::new()
        .add_listener(listener)
        .register_service(create_task(Arc::new(task)));
    server.start().await.map_err(|e| setup("start ttrpc", e))?;
    runc_wrapper::set_observer(metrics::runc_call);
    // The figures are for operators: a shim that cannot serve them serves
    // its pod all the same.
    let figures = MetricsSocket::serve(&socket, flags.namespace.clone(), flags.id.clone())
        .inspect_err(|e| warn!(error = %e, "figures not served"))
        .ok();
    info!(socket = %socket.display(), namespace = flags.namespace, id = flags.id, "shim serving");

    exit.wait().await;
    if detached.pending() > 0 {
        info!(
            pending = detached.pending(),
            "waiting for rootfs unmounts and runc deletes before exit"
        );
        let left = detached.wait_idle(UNMOUNT_GRACE).await;
        if left > 0 {
            warn!(left, "exiting with detached cleanup still running; containerd's cleanup unmounts the rootfs");
        }
    }
    drop(figures);
    // By the path this shim was launched with: containerd may already have
    // removed the bundle and the `address` file in it.
    remove_socket(&socket);
    if let Err(e) = server.shutdown().await {
        debug!(error = %e, "ttrpc shutdown");
    }
    info!("shim exits");
    Ok(())
}

fn remove_socket(path: &Path) {
    match shim_socket::remove(path) {
        Ok(true) => info!(socket = %path.display(), "shim socket removed"),
        Ok(false) => {}
        Err(e) => warn!(socket = %path.display(), error = %e, "cannot remove shim socket"),
    }
}

/// Takes fd 3 as the listening socket, after checking it is the one bound
/// at `path` (a shim started any other way refuses to run), and marks it
/// close-on-exec so runc and the containers never inherit it.
fn take_listener(path: &Path) -> Result<UnixListener, ServeError> {
    let refuse = |reason: String| ServeError::NoListener {
        path: path.to_path_buf(),
        reason,
    };
    let fd: RawFd = LISTENER_FD;
    // SAFETY: fcntl on an fd number only queries or sets its flags.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        return Err(refuse(std::io::Error::last_os_error().to_string()));
    }
    // SAFETY: as above; fd is open (F_GETFD succeeded).
    if unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) } < 0 {
        return Err(refuse(std::io::Error::last_os_error().to_string()));
    }
    // SAFETY: fd 3 is open, was handed to this process by `start` for it to
    // own, and nothing else in the process refers to it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let listener = UnixListener::from(owned);
    let bound = listener
        .local_addr()
        .map_err(|e| refuse(format!("not a unix socket: {e}")))?;
    if bound.as_pathname() != Some(path) {
        return Err(refuse(format!("it is bound to {bound:?}")));
    }
    let is_socket = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket());
    if !is_socket {
        return Err(refuse("the socket file is gone".into()));
    }
    listener
        .set_nonblocking(true)
        .map_err(|e| refuse(e.to_string()))?;
    Ok(listener)
}

/// Orphaned container processes (an exec's children, the init of a
/// container whose runc exited) are re-parented to the shim, which reaps
/// them, instead of to the node's init.
fn become_subreaper() -> Result<(), ServeError> {
    // SAFETY: PR_SET_CHILD_SUBREAPER takes one integer argument.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } < 0 {
        return Err(setup(
            "become a child subreaper",
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// SIGTERM and SIGINT (a node's `systemctl stop containerd` with
/// `KillMode=mixed`, a terminal's ^C) do not end the shim: its containers
/// run on, and containerd's Shutdown ends it once they are gone, as with
/// the stock shim. They are logged.
fn ignore_termination_signals() -> Result<(), ServeError> {
    use tokio::signal::unix::{signal, SignalKind};
    for kind in [SignalKind::terminate(), SignalKind::interrupt()] {
        let mut s = signal(kind).map_err(|e| setup("install signal handlers", e))?;
        tokio::spawn(async move {
            while s.recv().await.is_some() {
                info!(
                    signal = kind.as_raw_value(),
                    "signal ignored; the shim exits on containerd's Shutdown"
                );
            }
        });
    }
    Ok(())
}

fn setup(context: &'static str, e: impl std::fmt::Display) -> ServeError {
    ServeError::Setup {
        context,
        reason: e.to_string(),
    }
}
