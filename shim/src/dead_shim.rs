//! `containerd-shim-brisk-v2 delete`: containerd runs it whenever its
//! connection for a task closes, which includes every normal Delete, and
//! waits for it before it reports the exit. Only a dead shim leaves work
//! behind: its runc state and rootfs mount, removed here with the settings
//! saved at Create. A live pod shim removes a container's runc state itself
//! (at the exit, see `detached`), so nothing is asked of runc then: a second
//! `runc delete` would race the shim's own and cost containerd a runc start
//! on every exit.

use std::{
    io::Write,
    path::{Path, PathBuf},
    sync::Arc,
    time::SystemTime,
};

use containerd_shim::util::convert_to_timestamp;
use containerd_shim_protos::{
    api::DeleteResponse,
    protobuf::{Message, MessageField},
};
use runc_wrapper::{DirectWait, Runc};
use tracing::{info, warn};

use crate::{
    config::RuntimeConfig,
    error::{Result, ShimError},
    metrics_socket, rootfs,
    shim_socket::{self, Probe},
    unmount,
};

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
    let socket = bundle_socket(bundle);
    if let Some((path, Probe::Served)) = &socket {
        info!(id, socket = %path.display(), "the pod's shim still serves; it cleans up after the container");
        return Ok(());
    }
    let cfg = RuntimeConfig::load_saved(bundle, namespace);
    let runc = Runc::new(&cfg.runc_binary, &cfg.runc_root, Arc::new(DirectWait))
        .with_systemd_cgroup(cfg.systemd_cgroup);
    if runc.root().join(id).exists() {
        // Nobody asks again after this: a failure here leaves the state and
        // cgroups for good, so a failure that may pass (a busy node) gets a
        // second try.
        for attempt in 1..=2 {
            match runc.delete(id, true).await {
                Ok(()) => info!(id, "runc state removed"),
                Err(e) if e.is_not_found() => info!(id, "no runc state left"),
                Err(e) if attempt == 1 => {
                    warn!(id, error = %e, "runc delete --force failed; trying once more");
                    continue;
                }
                Err(e) => warn!(id, error = %e, "runc delete --force failed"),
            }
            break;
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
