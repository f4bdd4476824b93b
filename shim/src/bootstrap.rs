//! The shim binary's three lives, as containerd runs it: `start` (find or
//! launch the pod's shim and print its address), `delete` (clean up after a
//! shim that died) and serving the Task API.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use async_trait::async_trait;
use containerd_shim::{
    asynchronous::{publisher::RemotePublisher, spawn, util::write_str_to_file, ExitSignal, Shim},
    util::convert_to_timestamp,
    Config, Error as FrameworkError, Flags, StartOpts,
};
use containerd_shim_protos::{api::DeleteResponse, protobuf::MessageField};
use runc_wrapper::{DirectWait, Runc};
use tracing::{debug, info, warn};

use crate::{
    bundle_spec::BundleSpec, config::RuntimeConfig, detached::Detached, events::EventSink,
    reaper::Reaper, rootfs, task_service::TaskService,
};

/// Annotations that put a container into an existing shim, most specific first.
const GROUP_ANNOTATIONS: [&str; 2] = [
    "io.containerd.runc.v2.group",
    "io.kubernetes.cri.sandbox-id",
];

pub struct BriskShim {
    namespace: String,
    id: String,
    bundle: PathBuf,
    exit: Arc<ExitSignal>,
    detached: Detached,
    /// The socket this shim serves (empty for `start` and `delete`).
    socket: String,
}

/// How long a shim that was told to exit waits for detached unmounts.
const UNMOUNT_GRACE: Duration = Duration::from_secs(60);

/// The shim that serves `id`: the pod's group annotation, else the id itself.
pub fn grouping(spec: Option<&BundleSpec>, id: &str) -> String {
    spec.and_then(|s| GROUP_ANNOTATIONS.iter().find_map(|k| s.annotation(k)))
        .map_or_else(|| id.to_string(), String::from)
}

#[async_trait]
impl Shim for BriskShim {
    type T = TaskService;

    async fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        let bundle = if args.bundle.is_empty() {
            std::env::current_dir().unwrap_or_default()
        } else {
            PathBuf::from(&args.bundle)
        };
        BriskShim {
            namespace: args.namespace.clone(),
            id: args.id.clone(),
            bundle,
            exit: Arc::new(ExitSignal::default()),
            detached: Detached::default(),
            socket: args.socket.clone(),
        }
    }

    async fn start_shim(&mut self, opts: StartOpts) -> containerd_shim::Result<String> {
        let spec = BundleSpec::load(&self.bundle).ok();
        let group = grouping(spec.as_ref(), &opts.id);
        let address = spawn(opts, &group, Vec::new()).await?;
        write_str_to_file("address", &address).await?;
        Ok(address)
    }

    async fn delete_shim(&mut self) -> containerd_shim::Result<DeleteResponse> {
        cleanup_dead_shim(&self.namespace, &self.id, &self.bundle)
            .await
            .map_err(|e| FrameworkError::Other(e.to_string()))?;
        Ok(DeleteResponse {
            pid: 0,
            // The stock shim reports a container whose shim died as SIGKILLed.
            exit_status: 128 + libc::SIGKILL as u32,
            exited_at: MessageField::some(convert_to_timestamp(Some(SystemTime::now().into()))),
            ..Default::default()
        })
    }

    async fn wait(&mut self) {
        self.exit.wait().await;
        if self.detached.pending() > 0 {
            info!(
                pending = self.detached.pending(),
                "waiting for rootfs unmounts and runc deletes before exit"
            );
            let left = self.detached.wait_idle(UNMOUNT_GRACE).await;
            if left > 0 {
                warn!(left, "exiting with detached cleanup still running; containerd's cleanup unmounts the rootfs");
            }
        }
        // Remove the socket now, by the path we were started with: the
        // bundle holding the `address` file may already be gone.
        let path = self.socket.trim_start_matches("unix://");
        if !path.is_empty() {
            match std::fs::remove_file(path) {
                Ok(()) => info!(socket = path, "shim socket removed"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => warn!(socket = path, error = %e, "cannot remove shim socket"),
            }
        }
    }

    async fn create_task_service(&self, publisher: RemotePublisher) -> TaskService {
        // containerd-shim builds the task service before it binds the
        // socket; a process started for a container whose pod already has a
        // shim finds the socket taken and exits right after this. So nothing
        // costly here: volatile support is probed at the first Create.
        let reaper = Reaper::start().expect("install SIGCHLD handler");
        // Only its address: events go through our own forwarder (events.rs).
        let events = EventSink::new(publisher.address.clone(), self.namespace.clone());
        drop(publisher);
        debug!(
            namespace = self.namespace,
            id = self.id,
            "task service ready"
        );
        TaskService::new(
            self.namespace.clone(),
            reaper,
            events,
            self.exit.clone(),
            self.detached.clone(),
        )
    }
}

/// `containerd-shim-brisk-v2 delete`: containerd runs it whenever its
/// connection for a task closes, which includes every normal Delete, and
/// waits for it before it reports the exit. Only a dead shim leaves work
/// behind: its runc state and rootfs mount, removed here with the settings
/// saved at Create. A live pod shim removes a container's runc state itself
/// (at the exit, see `detached`), so nothing is asked of runc then: a second
/// `runc delete` would race the shim's own and cost containerd a runc start
/// on every exit.
pub async fn cleanup_dead_shim(
    namespace: &str,
    id: &str,
    bundle: &Path,
) -> crate::error::Result<()> {
    let socket = shim_socket(bundle);
    if let ShimSocket::Served(path) = &socket {
        info!(id, socket = %path.display(), "the pod's shim still serves; it cleans up after the container");
        return Ok(());
    }
    let cfg = RuntimeConfig::load_saved(bundle, namespace);
    let runc = Runc::new(&cfg.runc_binary, &cfg.runc_root, Arc::new(DirectWait))
        .with_systemd_cgroup(cfg.systemd_cgroup);
    if runc.root().join(id).exists() {
        match runc.delete(id, true).await {
            Ok(()) => info!(id, "runc state removed"),
            Err(e) if e.is_not_found() => info!(id, "no runc state left"),
            Err(e) => warn!(id, error = %e, "runc delete --force failed"),
        }
    } else {
        info!(id, "no runc state left");
    }
    let target = rootfs::rootfs_of(bundle);
    tokio::task::spawn_blocking(move || rootfs::unmount_all(&target))
        .await
        .map_err(|e| crate::error::ShimError::Other(e.to_string()))??;
    if let ShimSocket::Dead(path) = socket {
        match std::fs::remove_file(&path) {
            Ok(()) => info!(socket = %path.display(), "removed the dead shim's socket"),
            Err(e) => {
                warn!(socket = %path.display(), error = %e, "cannot remove the dead shim's socket")
            }
        }
    }
    Ok(())
}

/// What answers on the pod shim's socket, named by the bundle's `address`.
enum ShimSocket {
    /// A shim accepts connections: it is alive.
    Served(PathBuf),
    /// The socket file is there and refuses connections: its shim died.
    Dead(PathBuf),
    /// No address, no socket file, or neither answer (left alone).
    Unknown,
}

fn shim_socket(bundle: &Path) -> ShimSocket {
    let Ok(address) = std::fs::read_to_string(bundle.join("address")) else {
        return ShimSocket::Unknown;
    };
    let path = PathBuf::from(address.trim().trim_start_matches("unix://"));
    if path.as_os_str().is_empty() || !path.exists() {
        return ShimSocket::Unknown;
    }
    match std::os::unix::net::UnixStream::connect(&path) {
        Ok(_) => ShimSocket::Served(path),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => ShimSocket::Dead(path),
        Err(e) => {
            warn!(socket = %path.display(), error = %e, "shim socket neither served nor refused, kept");
            ShimSocket::Unknown
        }
    }
}
