//! A blocking CRI v1 client over containerd's unix socket. Each call runs on a
//! private tokio runtime with a deadline, so tests and Drop impls can call it
//! from plain threads.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use hyper_util::rt::TokioIo;
use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint, Uri};

pub use k8s_cri::v1::{ContainerState, ContainerStatus, LinuxContainerResources, PodSandboxState};

pub const BUSYBOX_IMAGE: &str = "localhost/brisk/busybox:latest";
pub const PAUSE_IMAGE: &str = "localhost/brisk/pause:latest";

/// IDs created through this client, for cleanup and leak checks.
#[derive(Debug, Default)]
pub struct Tracked {
    pub pods: Vec<String>,
    pub containers: Vec<String>,
}

/// A pod created by [`Cri::run_pod_sandbox`].
#[derive(Debug, Clone)]
pub struct Pod {
    pub id: String,
    pub name: String,
    pub handler: String,
    pub log_directory: PathBuf,
    pub config: cri::PodSandboxConfig,
}

/// What a container should run; see [`Cri::create_container`].
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub annotations: HashMap<String, String>,
    pub envs: Vec<(String, String)>,
    pub tty: bool,
    pub stdin: bool,
    pub resources: Option<LinuxContainerResources>,
    /// Join the pod's pid namespace (shareProcessNamespace); the pod must
    /// have been made with [`Cri::shared_pid_pod_config`].
    pub share_pod_pid: bool,
    /// hostPath mounts: (host path, container path, read-only).
    pub mounts: Vec<(PathBuf, PathBuf, bool)>,
    /// A privileged container (its pod must be privileged too:
    /// [`Cri::privileged_pod_config`]).
    pub privileged: bool,
}

impl ContainerSpec {
    /// A busybox container running `command`.
    pub fn new(name: &str, command: &[&str]) -> Self {
        ContainerSpec {
            name: name.to_string(),
            image: BUSYBOX_IMAGE.to_string(),
            command: command.iter().map(|s| s.to_string()).collect(),
            args: Vec::new(),
            annotations: HashMap::new(),
            envs: Vec::new(),
            tty: false,
            stdin: false,
            resources: None,
            share_pod_pid: false,
            mounts: Vec::new(),
            privileged: false,
        }
    }

    /// A privileged container, as `securityContext.privileged: true`.
    pub fn privileged(mut self) -> Self {
        self.privileged = true;
        self
    }

    /// The container runs `image` instead of busybox.
    pub fn image(mut self, image: &str) -> Self {
        self.image = image.to_string();
        self
    }
    /// Mount the host's `host` at `container` (a hostPath volume), with
    /// private propagation.
    pub fn mount(mut self, host: &Path, container: &Path, readonly: bool) -> Self {
        self.mounts
            .push((host.to_path_buf(), container.to_path_buf(), readonly));
        self
    }

    /// Joins the pod's pid namespace, as kubelet asks for a pod with
    /// `shareProcessNamespace: true`.
    pub fn share_pod_pid(mut self) -> Self {
        self.share_pod_pid = true;
        self
    }
    /// `sh -c SCRIPT`
    pub fn sh(name: &str, script: &str) -> Self {
        Self::new(name, &["sh", "-c", script])
    }
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args = args.iter().map(|s| s.to_string()).collect();
        self
    }
    pub fn tty(mut self, tty: bool) -> Self {
        self.tty = tty;
        self
    }
    pub fn stdin(mut self, stdin: bool) -> Self {
        self.stdin = stdin;
        self
    }
    pub fn annotation(mut self, k: &str, v: &str) -> Self {
        self.annotations.insert(k.to_string(), v.to_string());
        self
    }
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.envs.push((k.to_string(), v.to_string()));
        self
    }
    pub fn memory_limit(mut self, bytes: i64) -> Self {
        let r = self.resources.get_or_insert_with(Default::default);
        r.memory_limit_in_bytes = bytes;
        self
    }
    pub fn resources(mut self, r: LinuxContainerResources) -> Self {
        self.resources = Some(r);
        self
    }
}

/// Result of ExecSync.
#[derive(Debug, Clone)]
pub struct ExecResult {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit_code: i32,
}

impl ExecResult {
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

pub struct Cri {
    rt: tokio::runtime::Runtime,
    rs: RuntimeServiceClient<Channel>,
    is: ImageServiceClient<Channel>,
    tracked: Arc<Mutex<Tracked>>,
    cgroup_parent: String,
    log_root: PathBuf,
    /// Deadline of one CRI call.
    pub timeout: Duration,
}

/// The namespaces kubelet asks for in a host-network pod, for the pod and
/// each of its containers: the node's network, a pid namespace of its own,
/// the pod's IPC.
fn host_network_namespaces() -> Option<cri::NamespaceOption> {
    Some(cri::NamespaceOption {
        network: cri::NamespaceMode::Node as i32,
        pid: cri::NamespaceMode::Container as i32,
        ipc: cri::NamespaceMode::Pod as i32,
        ..Default::default()
    })
}

fn status_err(what: &str, s: tonic::Status) -> anyhow::Error {
    anyhow!("CRI {what}: {:?}: {}", s.code(), s.message())
}

static UID_COUNTER: AtomicU64 = AtomicU64::new(0);

fn unique_uid() -> String {
    let n = UID_COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{:x}-{:x}-{n}", std::process::id(), t)
}

impl Cri {
    /// Connect to the CRI endpoint at `socket`. New pods get `cgroup_parent`
    /// and a log directory below `log_root`.
    pub fn connect(socket: &Path, cgroup_parent: &str, log_root: &Path) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let path = socket.to_path_buf();
        // containerd creates the socket file a moment before it listens on
        // it (and a loaded machine stretches that moment): retry a refusal.
        let channel = rt.block_on(async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            loop {
                let path = path.clone();
                let attempt = Endpoint::try_from("http://[::]:50051")?
                    .connect_timeout(Duration::from_secs(10))
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        let path = path.clone();
                        async move {
                            Ok::<_, std::io::Error>(TokioIo::new(
                                tokio::net::UnixStream::connect(path).await?,
                            ))
                        }
                    }))
                    .await;
                match attempt {
                    Ok(channel) => break Ok(channel),
                    Err(_) if tokio::time::Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(50)).await
                    }
                    Err(e) => break Err(anyhow::Error::from(e).context("connect CRI socket")),
                }
            }
        })?;
        Ok(Cri {
            rt,
            rs: RuntimeServiceClient::new(channel.clone()),
            is: ImageServiceClient::new(channel),
            tracked: Arc::new(Mutex::new(Tracked::default())),
            cgroup_parent: cgroup_parent.to_string(),
            log_root: log_root.to_path_buf(),
            timeout: Duration::from_secs(60),
        })
    }

    pub fn tracked(&self) -> Arc<Mutex<Tracked>> {
        self.tracked.clone()
    }

    /// Share `other`'s record of created IDs: what either client creates is
    /// then removed by the teardown, whichever client made it. A second
    /// client that outlives containerd restarts (the chaos soak's) and the
    /// client each restart makes keep one record this way.
    pub fn adopt_tracked(&mut self, other: &Cri) {
        self.tracked = other.tracked.clone();
    }

    pub fn cgroup_parent(&self) -> &str {
        &self.cgroup_parent
    }

    /// The record of created IDs (a panic while it was held does not matter).
    fn tracked_ids(&self) -> MutexGuard<'_, Tracked> {
        self.tracked.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn block<T, F>(&self, what: &str, fut: F) -> Result<T>
    where
        F: Future<Output = Result<T, tonic::Status>>,
    {
        let timeout = self.timeout;
        self.rt.block_on(async {
            match tokio::time::timeout(timeout, fut).await {
                Ok(r) => r.map_err(|s| status_err(what, s)),
                Err(_) => Err(anyhow!("CRI {what}: no answer within {timeout:?}")),
            }
        })
    }

    /// The RuntimeService call `what` (the name errors give): `call` makes
    /// the request on a client of its own; the answer's message.
    fn runtime<T, F, Fut>(&self, what: &str, call: F) -> Result<T>
    where
        F: FnOnce(RuntimeServiceClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let answer = call(self.rs.clone());
        self.block(what, async move { Ok(answer.await?.into_inner()) })
    }

    pub fn version(&self) -> Result<cri::VersionResponse> {
        let req = cri::VersionRequest {
            version: "v1".into(),
        };
        self.runtime("Version", |mut c| async move { c.version(req).await })
    }

    /// CRI's Status: the runtime's conditions and, on containerd 2.x, its
    /// runtime handlers with their features (introspected through each
    /// shim's `-info`).
    pub fn status(&self) -> Result<cri::StatusResponse> {
        let req = cri::StatusRequest { verbose: false };
        self.runtime("Status", |mut c| async move { c.status(req).await })
    }

    /// True when CRI knows the image (by name).
    pub fn image_present(&self, image: &str) -> Result<bool> {
        let mut c = self.is.clone();
        let req = cri::ImageStatusRequest {
            image: Some(cri::ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            verbose: false,
        };
        let r = self.block("ImageStatus", async move {
            Ok(c.image_status(req).await?.into_inner())
        })?;
        Ok(r.image.is_some())
    }

    /// Wait until CRI knows every image in `images`.
    pub fn wait_images(&self, images: &[&str], timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        for img in images {
            loop {
                if self.image_present(img)? {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("CRI does not know image {img} after {timeout:?}");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    /// A pod-sandbox config on host network with our cgroup parent.
    pub fn pod_config(&self, name: &str) -> cri::PodSandboxConfig {
        let uid = unique_uid();
        let log_directory = self.log_root.join(format!("{name}_{uid}"));
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: name.into(),
                uid,
                namespace: "brisk-test".into(),
                attempt: 0,
            }),
            // Host network means the host UTS namespace: no hostname to set.
            hostname: String::new(),
            log_directory: log_directory.to_string_lossy().into_owned(),
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: self.cgroup_parent.clone(),
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: host_network_namespaces(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// RunPodSandbox on `handler` ("runc", "brisk", ...).
    /// [`Cri::pod_config`] of a pod whose containers share one pid
    /// namespace (`shareProcessNamespace: true`).
    pub fn shared_pid_pod_config(&self, name: &str) -> cri::PodSandboxConfig {
        let mut config = self.pod_config(name);
        if let Some(ns) = config
            .linux
            .as_mut()
            .and_then(|l| l.security_context.as_mut())
            .and_then(|s| s.namespace_options.as_mut())
        {
            ns.pid = cri::NamespaceMode::Pod as i32;
        }
        config
    }

    /// [`Cri::pod_config`] of a pod that may hold privileged containers.
    pub fn privileged_pod_config(&self, name: &str) -> cri::PodSandboxConfig {
        let mut config = self.pod_config(name);
        if let Some(sc) = config
            .linux
            .as_mut()
            .and_then(|l| l.security_context.as_mut())
        {
            sc.privileged = true;
        }
        config
    }

    pub fn run_pod_sandbox(&self, handler: &str, name: &str) -> Result<Pod> {
        let config = self.pod_config(name);
        self.run_pod_sandbox_with(handler, config)
    }

    pub fn run_pod_sandbox_with(
        &self,
        handler: &str,
        config: cri::PodSandboxConfig,
    ) -> Result<Pod> {
        let log_directory = PathBuf::from(&config.log_directory);
        std::fs::create_dir_all(&log_directory)?;
        let name = config
            .metadata
            .as_ref()
            .map(|m| m.name.clone())
            .unwrap_or_default();
        let req = cri::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.into(),
        };
        let r = self.runtime("RunPodSandbox", |mut c| async move {
            c.run_pod_sandbox(req).await
        })?;
        self.tracked_ids().pods.push(r.pod_sandbox_id.clone());
        Ok(Pod {
            id: r.pod_sandbox_id,
            name,
            handler: handler.into(),
            log_directory,
            config,
        })
    }

    pub fn stop_pod(&self, pod_id: &str) -> Result<()> {
        let req = cri::StopPodSandboxRequest {
            pod_sandbox_id: pod_id.into(),
        };
        self.runtime("StopPodSandbox", |mut c| async move {
            c.stop_pod_sandbox(req).await
        })?;
        Ok(())
    }

    pub fn remove_pod(&self, pod_id: &str) -> Result<()> {
        let req = cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod_id.into(),
        };
        self.runtime("RemovePodSandbox", |mut c| async move {
            c.remove_pod_sandbox(req).await
        })?;
        Ok(())
    }

    pub fn pod_status(&self, pod_id: &str) -> Result<cri::PodSandboxStatus> {
        let req = cri::PodSandboxStatusRequest {
            pod_sandbox_id: pod_id.into(),
            verbose: false,
        };
        let r = self.runtime("PodSandboxStatus", |mut c| async move {
            c.pod_sandbox_status(req).await
        })?;
        r.status.ok_or_else(|| anyhow!("PodSandboxStatus: empty"))
    }

    pub fn list_pods(&self) -> Result<Vec<cri::PodSandbox>> {
        let req = cri::ListPodSandboxRequest { filter: None };
        let r = self.runtime("ListPodSandbox", |mut c| async move {
            c.list_pod_sandbox(req).await
        })?;
        Ok(r.items)
    }

    /// CreateContainer in `pod`. The CRI log goes to `<pod log dir>/<name>.log`.
    pub fn create_container(&self, pod: &Pod, spec: &ContainerSpec) -> Result<String> {
        let config = cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: spec.name.clone(),
                attempt: 0,
            }),
            image: Some(cri::ImageSpec {
                image: spec.image.clone(),
                ..Default::default()
            }),
            command: spec.command.clone(),
            args: spec.args.clone(),
            envs: spec
                .envs
                .iter()
                .map(|(k, v)| cri::KeyValue {
                    key: k.clone(),
                    value: v.clone(),
                })
                .collect(),
            annotations: spec.annotations.clone(),
            mounts: spec
                .mounts
                .iter()
                .map(|(host, container, readonly)| cri::Mount {
                    host_path: host.to_string_lossy().into_owned(),
                    container_path: container.to_string_lossy().into_owned(),
                    readonly: *readonly,
                    ..Default::default()
                })
                .collect(),
            log_path: format!("{}.log", spec.name),
            stdin: spec.stdin,
            tty: spec.tty,
            linux: Some(cri::LinuxContainerConfig {
                resources: spec.resources.clone(),
                // What kubelet sends for a host-network pod: own pid
                // namespace, or the pod's with shareProcessNamespace.
                security_context: Some(cri::LinuxContainerSecurityContext {
                    namespace_options: host_network_namespaces().map(|mut ns| {
                        if spec.share_pod_pid {
                            ns.pid = cri::NamespaceMode::Pod as i32;
                        }
                        ns
                    }),
                    privileged: spec.privileged,
                    ..Default::default()
                }),
            }),
            ..Default::default()
        };
        let req = cri::CreateContainerRequest {
            pod_sandbox_id: pod.id.clone(),
            config: Some(config),
            sandbox_config: Some(pod.config.clone()),
        };
        let r = self.runtime("CreateContainer", |mut c| async move {
            c.create_container(req).await
        })?;
        self.tracked_ids().containers.push(r.container_id.clone());
        Ok(r.container_id)
    }

    pub fn start_container(&self, id: &str) -> Result<()> {
        let req = cri::StartContainerRequest {
            container_id: id.into(),
        };
        self.runtime("StartContainer", |mut c| async move {
            c.start_container(req).await
        })?;
        Ok(())
    }

    /// Create and start.
    pub fn run_container(&self, pod: &Pod, spec: &ContainerSpec) -> Result<String> {
        let id = self.create_container(pod, spec)?;
        self.start_container(&id)?;
        Ok(id)
    }

    /// StopContainer with a grace period of `timeout_s` seconds (0: SIGKILL at once).
    pub fn stop_container(&self, id: &str, timeout_s: i64) -> Result<()> {
        let req = cri::StopContainerRequest {
            container_id: id.into(),
            timeout: timeout_s,
        };
        self.runtime("StopContainer", |mut c| async move {
            c.stop_container(req).await
        })?;
        Ok(())
    }

    pub fn remove_container(&self, id: &str) -> Result<()> {
        let req = cri::RemoveContainerRequest {
            container_id: id.into(),
        };
        self.runtime("RemoveContainer", |mut c| async move {
            c.remove_container(req).await
        })?;
        Ok(())
    }

    pub fn container_status(&self, id: &str) -> Result<ContainerStatus> {
        let req = cri::ContainerStatusRequest {
            container_id: id.into(),
            verbose: false,
        };
        let r = self.runtime("ContainerStatus", |mut c| async move {
            c.container_status(req).await
        })?;
        r.status
            .ok_or_else(|| anyhow!("ContainerStatus {id}: empty"))
    }

    /// ListContainers, optionally of one pod.
    pub fn list_containers(&self, pod_id: Option<&str>) -> Result<Vec<cri::Container>> {
        let filter = pod_id.map(|p| cri::ContainerFilter {
            pod_sandbox_id: p.into(),
            ..Default::default()
        });
        let req = cri::ListContainersRequest { filter };
        let r = self.runtime("ListContainers", |mut c| async move {
            c.list_containers(req).await
        })?;
        Ok(r.containers)
    }

    pub fn exec_sync(&self, id: &str, cmd: &[&str], timeout: Duration) -> Result<ExecResult> {
        let req = cri::ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: timeout.as_secs() as i64,
        };
        let r = self.runtime("ExecSync", |mut c| async move { c.exec_sync(req).await })?;
        Ok(ExecResult {
            stdout: r.stdout,
            stderr: r.stderr,
            exit_code: r.exit_code,
        })
    }

    pub fn update_container_resources(
        &self,
        id: &str,
        resources: LinuxContainerResources,
    ) -> Result<()> {
        let req = cri::UpdateContainerResourcesRequest {
            container_id: id.into(),
            linux: Some(resources),
            ..Default::default()
        };
        self.runtime("UpdateContainerResources", |mut c| async move {
            c.update_container_resources(req).await
        })?;
        Ok(())
    }

    /// UpdateContainerResources with gRPC `metadata` (e.g. a W3C
    /// `traceparent`, as a traced kubelet sends it).
    pub fn update_container_resources_with_metadata(
        &self,
        id: &str,
        resources: LinuxContainerResources,
        metadata: &[(&'static str, &str)],
    ) -> Result<()> {
        let mut req = tonic::Request::new(cri::UpdateContainerResourcesRequest {
            container_id: id.into(),
            linux: Some(resources),
            ..Default::default()
        });
        for (k, v) in metadata {
            let v = tonic::metadata::MetadataValue::try_from(*v)
                .map_err(|e| anyhow!("metadata {k}={v:?}: {e}"))?;
            req.metadata_mut().insert(*k, v);
        }
        self.runtime("UpdateContainerResources", |mut c| async move {
            c.update_container_resources(req).await
        })?;
        Ok(())
    }

    pub fn container_stats(&self, id: &str) -> Result<cri::ContainerStats> {
        let req = cri::ContainerStatsRequest {
            container_id: id.into(),
        };
        let r = self.runtime("ContainerStats", |mut c| async move {
            c.container_stats(req).await
        })?;
        r.stats.ok_or_else(|| anyhow!("ContainerStats {id}: empty"))
    }

    /// Poll ContainerStatus until the container is EXITED.
    pub fn wait_for_exited(&self, id: &str, timeout: Duration) -> Result<ContainerStatus> {
        self.wait_for_state(id, ContainerState::ContainerExited, timeout)
    }

    pub fn wait_for_state(
        &self,
        id: &str,
        state: ContainerState,
        timeout: Duration,
    ) -> Result<ContainerStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let st = self.container_status(id)?;
            if st.state == state as i32 {
                return Ok(st);
            }
            if Instant::now() > deadline {
                bail!(
                    "container {id} not {state:?} after {timeout:?}: state {:?} reason {:?} exit {}",
                    ContainerState::try_from(st.state).ok(),
                    st.reason,
                    st.exit_code
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stop and remove every pod that CRI knows (best effort); returns errors.
    pub fn remove_all_pods(&self) -> Vec<String> {
        let mut errors = Vec::new();
        let mut ids: Vec<String> = self.tracked_ids().pods.clone();
        match self.list_pods() {
            Ok(pods) => {
                for p in pods {
                    if !ids.contains(&p.id) {
                        ids.push(p.id);
                    }
                }
            }
            Err(e) => errors.push(format!("list pods: {e:#}")),
        }
        for id in ids {
            if let Err(e) = self.stop_pod(&id) {
                if !format!("{e:#}").contains("NotFound") {
                    errors.push(format!("stop pod {id}: {e:#}"));
                }
            }
            if let Err(e) = self.remove_pod(&id) {
                if !format!("{e:#}").contains("NotFound") {
                    errors.push(format!("remove pod {id}: {e:#}"));
                }
            }
        }
        errors
    }
}

/// Readable name of a CRI state number.
pub fn state_name(state: i32) -> String {
    ContainerState::try_from(state)
        .map(|s| format!("{s:?}"))
        .unwrap_or_else(|_| format!("state#{state}"))
}
