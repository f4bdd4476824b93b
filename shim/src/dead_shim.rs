//! `containerd-shim-brisk-v2 delete`: containerd runs it whenever its
//! connection for a task closes, which includes every normal Delete, and
//! waits for it before it reports the exit. Only a dead shim leaves work
//! behind: its runc state and rootfs mount, removed here with the settings
//! saved at Create. A live pod shim removes a container's runc state itself
//! (at the exit, see `detached`), so nothing is asked of runc then: a second
//! `runc delete` would race the shim's own and cost containerd a runc start
//! on every exit.
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
    api::DeleteResponse,
    protobuf::{Message, MessageField},
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

/// The longest `runc delete --force` may take here: with the removal by
/// hand after it and the unmount, the cleanup stays well within the 5 s
/// containerd gives it.
const RUNC_BOUND: Duration = Duration::from_secs(2);

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
        info!(id, socket = %path.display(), "the pod's shim still serves; it cleans up after the container");
        return Ok(());
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
    let Some((path, probe)) = socket else {
        return Ok(());
    };
    if probe == Probe::Dead {
        remove_dead_socket(&path);
    }
    // Its figures socket too, once nobody serves it. Another container's
    // cleanup may have removed the shim socket already (Absent).
    let figures = metrics_socket::path_for(&path);
    if probe != Probe::Served && shim_socket::probe(&figures).ok() == Some(Probe::Dead) {
        remove_dead_socket(&figures);
    }
    Ok(())
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
