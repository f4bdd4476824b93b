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
use tracing::{info, warn};

use crate::{
    bundle_spec::BundleSpec,
    config::RuntimeConfig,
    events::EventSink,
    reaper::Reaper,
    rootfs::{self, Unmounter},
    task_service::TaskService,
    volatile,
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
    unmounter: Unmounter,
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
            unmounter: Unmounter::default(),
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
        if self.unmounter.pending() > 0 {
            info!(
                pending = self.unmounter.pending(),
                "waiting for rootfs unmounts before exit"
            );
            let left = self.unmounter.wait_idle(UNMOUNT_GRACE).await;
            if left > 0 {
                warn!(left, "exiting with rootfs unmounts still running; containerd's cleanup unmounts them");
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
        let reaper = Reaper::start().expect("install SIGCHLD handler");
        // Probe (and log) volatile support once, before the first Create needs it.
        let _ = tokio::task::spawn_blocking(volatile::supported).await;
        // Only its address: events go through our own forwarder (events.rs).
        let events = EventSink::new(publisher.address.clone(), self.namespace.clone());
        drop(publisher);
        info!(
            namespace = self.namespace,
            id = self.id,
            "brisk shim serving"
        );
        TaskService::new(
            self.namespace.clone(),
            reaper,
            events,
            self.exit.clone(),
            self.unmounter.clone(),
        )
    }
}

/// `containerd-shim-brisk-v2 delete`: the shim of this container is gone, so
/// remove its runc state and its rootfs mount with the settings saved at Create.
pub async fn cleanup_dead_shim(
    namespace: &str,
    id: &str,
    bundle: &Path,
) -> crate::error::Result<()> {
    let cfg = RuntimeConfig::load_saved(bundle, namespace);
    let runc = Runc::new(&cfg.runc_binary, &cfg.runc_root, Arc::new(DirectWait))
        .with_systemd_cgroup(cfg.systemd_cgroup);
    match runc.delete(id, true).await {
        Ok(()) => info!(id, "runc state removed"),
        Err(e) if e.is_not_found() => info!(id, "no runc state left"),
        Err(e) => warn!(id, error = %e, "runc delete --force failed"),
    }
    let target = rootfs::rootfs_of(bundle);
    tokio::task::spawn_blocking(move || rootfs::unmount_all(&target))
        .await
        .map_err(|e| crate::error::ShimError::Other(e.to_string()))??;
    remove_dead_socket(bundle);
    Ok(())
}

/// Removes the pod shim's socket when nothing answers on it any more, so a
/// killed shim leaves nothing in /run/containerd/s/. A live shim (serving the
/// pod's other containers) keeps its socket.
fn remove_dead_socket(bundle: &Path) {
    let Ok(address) = std::fs::read_to_string(bundle.join("address")) else {
        return;
    };
    let path = address.trim().trim_start_matches("unix://");
    if path.is_empty() || !Path::new(path).exists() {
        return;
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => info!(socket = path, "shim socket still served, kept"),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            match std::fs::remove_file(path) {
                Ok(()) => info!(socket = path, "removed the dead shim's socket"),
                Err(e) => warn!(socket = path, error = %e, "cannot remove the dead shim's socket"),
            }
        }
        Err(e) => warn!(socket = path, error = %e, "shim socket neither served nor refused, kept"),
    }
}
