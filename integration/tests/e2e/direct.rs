//! Talking ttrpc to a brisk shim directly: start it the way containerd
//! does (`containerd-shim-brisk-v2 ... start` in a bundle, publishing to a
//! private containerd), or connect to the shim of a CRI pod, and call the
//! Task API with requests the test builds itself, bad ones included.
//!
//! [`Fixture`] gives a test a private containerd, a shim started directly in
//! the containerd's own ctr namespace, a tiny busybox image directory for
//! overlay rootfs, and a long-running "keeper" container in that shim whose
//! health is checked after every bad request.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use brisk_integration::{sys, Containerd, Options, BRISK_HANDLER};
use containerd_shim_protos::{
    api::{
        self, CreateTaskRequest, CreateTaskResponse, DeleteResponse, Mount, StateResponse,
        WaitResponse,
    },
    protobuf::{well_known_types::any::Any, CodedOutputStream, MessageField},
    shim_async::{Client, TaskClient},
    ttrpc::{self, Code},
};

use crate::common;

/// An error answer of the shim, or a transport failure (code UNKNOWN with
/// the transport's message).
#[derive(Debug, Clone)]
pub struct CallError {
    pub code: Code,
    pub message: String,
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)
    }
}

pub type CallResult<T> = std::result::Result<T, CallError>;

fn call_error(e: ttrpc::Error) -> CallError {
    match e {
        ttrpc::Error::RpcStatus(s) => CallError {
            code: s.code(),
            message: s.message().to_string(),
        },
        other => CallError {
            code: Code::UNKNOWN,
            message: format!("transport: {other}"),
        },
    }
}

/// Require an error with `code` whose message contains every one of `needles`;
/// returns the message.
pub fn expect_err<T: fmt::Debug>(
    what: &str,
    r: CallResult<T>,
    code: Code,
    needles: &[&str],
) -> String {
    match r {
        Ok(v) => panic!("{what}: expected {code:?} error, got success {v:?}"),
        Err(e) => {
            assert_eq!(e.code, code, "{what}: wrong code, error {e}");
            for n in needles {
                assert!(e.message.contains(n), "{what}: error lacks {n:?}: {e}");
            }
            eprintln!("{what}: {e}");
            e.message
        }
    }
}

/// A ttrpc client of one shim.
pub struct Shim {
    rt: tokio::runtime::Runtime,
    client: TaskClient,
    /// The shim's socket.
    pub socket: PathBuf,
    /// Deadline of one call (Wait has its own).
    pub timeout: Duration,
}

/// The `unix://` address -> socket path.
fn socket_of(address: &str) -> PathBuf {
    PathBuf::from(address.trim().trim_start_matches("unix://"))
}

impl Shim {
    /// Start a shim as containerd does: `SHIM -namespace NS -address A
    /// -publish-binary containerd -id ID start` with `bundle` as working
    /// directory; the started shim publishes to `cd`'s ttrpc socket. A
    /// regular file `log` in the bundle takes the shim's log.
    pub fn start(cd: &Containerd, namespace: &str, id: &str, bundle: &Path) -> Result<Shim> {
        let log = bundle.join("log");
        if !log.exists() {
            std::fs::write(&log, "")?;
        }
        let ttrpc_address = format!("{}.ttrpc", cd.address());
        let out = sys::run_with_timeout(
            Command::new(&cd.brisk_bin)
                .args(["-namespace", namespace, "-address", &cd.address()])
                .args(["-publish-binary", "/usr/bin/containerd", "-id", id, "start"])
                .env("TTRPC_ADDRESS", &ttrpc_address)
                .env("GRPC_ADDRESS", cd.address())
                .current_dir(bundle),
            Duration::from_secs(20),
        )?;
        let address = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !out.status.success() || address.is_empty() {
            bail!(
                "shim start failed ({}): {address} {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let socket = socket_of(&address);
        cd.track_socket(&socket);
        Self::connect(&socket)
    }

    /// Connect to the shim listening on `socket`.
    pub fn connect(socket: &Path) -> Result<Shim> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let addr = format!("unix://{}", socket.display());
        let client = rt
            .block_on(async { Client::connect(&addr).await })
            .map_err(|e| anyhow!("connect {addr}: {e}"))?;
        Ok(Shim {
            rt,
            client: TaskClient::new(client),
            socket: socket.to_path_buf(),
            timeout: Duration::from_secs(60),
        })
    }

    /// Connect to the shim serving the bundle `bundle` (its `address` file).
    /// Connect to the shim of a bundle: its `address` file, or, from
    /// containerd 2.3 on (for shims that do not write that file, as the
    /// stock one), the address containerd kept in `bootstrap.json`.
    pub fn of_bundle(bundle: &Path) -> Result<Shim> {
        let a = match std::fs::read_to_string(bundle.join("address")) {
            Ok(a) => a,
            Err(_) => {
                let path = bundle.join("bootstrap.json");
                let text = std::fs::read_to_string(&path).with_context(|| {
                    format!("address file or bootstrap.json of {}", bundle.display())
                })?;
                let v: serde_json::Value =
                    serde_json::from_str(&text).with_context(|| format!("{}", path.display()))?;
                v["address"]
                    .as_str()
                    .with_context(|| format!("no address in {}", path.display()))?
                    .to_string()
            }
        };
        Self::connect(&socket_of(&a))
    }

    /// Connect to the shim of a CRI container (namespace k8s.io).
    pub fn of_cri_container(cd: &Containerd, id: &str) -> Result<Shim> {
        Self::of_bundle(
            &cd.dir
                .join("state/io.containerd.runtime.v2.task/k8s.io")
                .join(id),
        )
    }

    fn call<T, F, Fut>(&self, timeout: Duration, f: F) -> CallResult<T>
    where
        F: FnOnce(TaskClient) -> Fut,
        Fut: std::future::Future<Output = ttrpc::Result<T>>,
    {
        let c = self.client.clone();
        self.rt.block_on(async move {
            match tokio::time::timeout(timeout, f(c)).await {
                Ok(r) => r.map_err(call_error),
                Err(_) => Err(CallError {
                    code: Code::DEADLINE_EXCEEDED,
                    message: format!("test client: no answer within {timeout:?}"),
                }),
            }
        })
    }

    pub fn create(&self, req: &CreateTaskRequest) -> CallResult<CreateTaskResponse> {
        let req = req.clone();
        self.call(self.timeout, |c| async move { c.create(ctx(), &req).await })
    }

    pub fn start_task(&self, id: &str, exec_id: &str) -> CallResult<u32> {
        let req = api::StartRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            ..Default::default()
        };
        self.call(self.timeout, |c| async move { c.start(ctx(), &req).await })
            .map(|r| r.pid)
    }

    pub fn state(&self, id: &str, exec_id: &str) -> CallResult<StateResponse> {
        let req = api::StateRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            ..Default::default()
        };
        self.call(self.timeout, |c| async move { c.state(ctx(), &req).await })
    }

    pub fn kill(&self, id: &str, exec_id: &str, signal: u32) -> CallResult<()> {
        let req = api::KillRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            signal,
            ..Default::default()
        };
        self.call(self.timeout, |c| async move { c.kill(ctx(), &req).await })
            .map(|_| ())
    }

    pub fn pause(&self, id: &str) -> CallResult<()> {
        let req = api::PauseRequest {
            id: id.into(),
            ..Default::default()
        };
        self.call(self.timeout, |c| async move { c.pause(ctx(), &req).await })
            .map(|_| ())
    }

    pub fn delete(&self, id: &str, exec_id: &str) -> CallResult<DeleteResponse> {
        let req = api::DeleteRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            ..Default::default()
        };
        self.call(self.timeout, |c| async move { c.delete(ctx(), &req).await })
    }

    pub fn wait(&self, id: &str, exec_id: &str, timeout: Duration) -> CallResult<WaitResponse> {
        let req = api::WaitRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            ..Default::default()
        };
        self.call(timeout, |c| async move { c.wait(ctx(), &req).await })
    }

    /// Register an exec running `args`, its stdout and stderr appended to
    /// the file `out` (when given).
    pub fn exec(
        &self,
        id: &str,
        exec_id: &str,
        args: &[&str],
        out: Option<&Path>,
    ) -> CallResult<()> {
        let spec = serde_json::json!({
            "args": args,
            "cwd": "/",
            "env": ["PATH=/bin"],
            "user": {"uid": 0, "gid": 0},
            "terminal": false,
        });
        let out = out
            .map(|p| format!("file://{}", p.display()))
            .unwrap_or_default();
        let req = api::ExecProcessRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            stdout: out.clone(),
            stderr: out,
            spec: MessageField::some(Any {
                type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
                value: serde_json::to_vec(&spec).unwrap(),
                ..Default::default()
            }),
            ..Default::default()
        };
        self.call(self.timeout, |c| async move { c.exec(ctx(), &req).await })
            .map(|_| ())
    }

    /// Update with `resources` as the raw JSON payload.
    pub fn update(&self, id: &str, resources: &[u8]) -> CallResult<()> {
        let req = api::UpdateTaskRequest {
            id: id.into(),
            resources: MessageField::some(Any {
                type_url: "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources".into(),
                value: resources.to_vec(),
                ..Default::default()
            }),
            ..Default::default()
        };
        self.call(self.timeout, |c| async move { c.update(ctx(), &req).await })
            .map(|_| ())
    }

    pub fn pids(&self, id: &str) -> CallResult<Vec<u32>> {
        let req = api::PidsRequest {
            id: id.into(),
            ..Default::default()
        };
        self.call(self.timeout, |c| async move { c.pids(ctx(), &req).await })
            .map(|r| r.processes.iter().map(|p| p.pid).collect())
    }

    pub fn stats(&self, id: &str) -> CallResult<()> {
        let req = api::StatsRequest {
            id: id.into(),
            ..Default::default()
        };
        self.call(self.timeout, |c| async move { c.stats(ctx(), &req).await })
            .map(|_| ())
    }

    pub fn shutdown(&self) -> CallResult<()> {
        let req = api::ShutdownRequest::default();
        self.call(
            self.timeout,
            |c| async move { c.shutdown(ctx(), &req).await },
        )
        .map(|_| ())
    }

    /// Run `args` as exec `exec_id` to completion; returns (exit status, output).
    pub fn exec_sync(
        &self,
        id: &str,
        exec_id: &str,
        args: &[&str],
        out_dir: &Path,
    ) -> CallResult<(u32, String)> {
        let out = out_dir.join(format!("exec-{id}-{exec_id}.out"));
        let _ = std::fs::remove_file(&out);
        self.exec(id, exec_id, args, Some(&out))?;
        self.start_task(id, exec_id)?;
        let w = self.wait(id, exec_id, Duration::from_secs(30))?;
        self.delete(id, exec_id)?;
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        let _ = std::fs::remove_file(&out);
        Ok((w.exit_status, text))
    }
}

fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(0)
}

/// Status name of a State answer.
pub fn status_of(s: &StateResponse) -> api::Status {
    s.status.enum_value_or(api::Status::UNKNOWN)
}

/// `runtimeoptions.v1.Options` carrying a brisk.toml body (`ConfigBody`),
/// as containerd's CRI would pass `ConfigPath`.
pub fn config_body_options(toml: &str) -> Any {
    let mut buf = Vec::new();
    {
        let mut os = CodedOutputStream::vec(&mut buf);
        os.write_string(1, "io.containerd.brisk.v1.Config").unwrap();
        os.write_bytes(3, toml.as_bytes()).unwrap();
        os.flush().unwrap();
    }
    Any {
        type_url: "runtimeoptions.v1.Options".into(),
        value: buf,
        ..Default::default()
    }
}

/// `runtimeoptions.v1.Options` naming a brisk.toml file (`ConfigPath`).
pub fn config_path_options(path: &Path) -> Any {
    let mut buf = Vec::new();
    {
        let mut os = CodedOutputStream::vec(&mut buf);
        os.write_string(1, "io.containerd.brisk.v1.Config").unwrap();
        os.write_string(2, &path.to_string_lossy()).unwrap();
        os.flush().unwrap();
    }
    Any {
        type_url: "runtimeoptions.v1.Options".into(),
        value: buf,
        ..Default::default()
    }
}

/// A directory with a static busybox and the applets the tests use: the
/// lower layer of every overlay rootfs.
pub fn build_image(dir: &Path) -> Result<PathBuf> {
    let img = dir.join("image");
    for d in ["bin", "proc", "dev", "sys", "tmp", "etc", "data"] {
        std::fs::create_dir_all(img.join(d))?;
    }
    std::fs::copy("/bin/busybox", img.join("bin/busybox"))
        .context("copy /bin/busybox (apt-get install busybox-static)")?;
    for applet in [
        "sh", "sleep", "cat", "echo", "true", "false", "touch", "ls", "mkdir", "rm", "test",
    ] {
        std::os::unix::fs::symlink("busybox", img.join("bin").join(applet))?;
    }
    Ok(img)
}

/// Writable layers of one overlay rootfs.
#[derive(Debug, Clone)]
pub struct Layer {
    pub lower: PathBuf,
    pub upper: PathBuf,
    pub work: PathBuf,
}

impl Layer {
    /// Fresh upper and work directories `dir/NAME/{upper,work}` over `lower`.
    pub fn new(dir: &Path, name: &str, lower: &Path) -> Result<Layer> {
        let base = dir.join(name);
        let l = Layer {
            lower: lower.to_path_buf(),
            upper: base.join("upper"),
            work: base.join("work"),
        };
        std::fs::create_dir_all(&l.upper)?;
        std::fs::create_dir_all(&l.work)?;
        Ok(l)
    }

    /// The mount a containerd overlay snapshot would hand over.
    pub fn mounts(&self) -> Vec<Mount> {
        vec![Mount {
            type_: "overlay".into(),
            source: "overlay".into(),
            options: vec![
                format!("workdir={}", self.work.display()),
                format!("upperdir={}", self.upper.display()),
                format!("lowerdir={}", self.lower.display()),
            ],
            ..Default::default()
        }]
    }

    /// The volatile marker a volatile mount of this layer leaves.
    pub fn marker(&self) -> PathBuf {
        self.work.join("work/incompat/volatile")
    }
}

/// Write `bundle/config.json` for a container running `args` in cgroup
/// `cgroup`, with an empty `rootfs` mount point.
pub fn write_bundle(bundle: &Path, args: &[&str], cgroup: &str) -> Result<()> {
    std::fs::create_dir_all(bundle.join("rootfs"))?;
    let caps = [
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_FOWNER",
        "CAP_KILL",
        "CAP_SETGID",
        "CAP_SETUID",
    ];
    let spec = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": ["PATH=/bin"],
            "cwd": "/",
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": false},
        "hostname": "direct",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}
        ],
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
            "cgroupsPath": cgroup,
            "resources": {"devices": [{"allow": false, "access": "rwm"}]}
        }
    });
    std::fs::write(
        bundle.join("config.json"),
        serde_json::to_vec_pretty(&spec)?,
    )?;
    Ok(())
}

/// A private containerd, a directly started brisk shim and its keeper.
pub struct Fixture {
    // First, so it reads the log before the containerd's teardown removes it.
    _log: LogOnPanic,
    pub cd: Containerd,
    pub shim: Shim,
    /// The ctr namespace the shim serves (the containerd's tag).
    pub ns: String,
    /// Where bundles, layers and outputs go.
    pub work: PathBuf,
    pub image: PathBuf,
    /// Id of the long-running container of the shim.
    pub keeper: String,
    n: AtomicU32,
    created: std::sync::Mutex<Vec<String>>,
}

impl Fixture {
    /// None when integration tests cannot run here.
    pub fn new(name: &str) -> Option<Fixture> {
        Self::with_options(name, Options::default())
    }

    pub fn with_options(name: &str, opts: Options) -> Option<Fixture> {
        let cd = common::start_with(BRISK_HANDLER, opts)?;
        let ns = cd.tag.clone();
        let work = cd.dir.join("direct");
        std::fs::create_dir_all(&work).expect("work dir");
        let image = build_image(&work).expect("image dir");
        let keeper = format!("{name}-keeper");
        let bundle = work.join(&keeper);
        write_bundle(&bundle, &["sleep", "1000"], &cd.ctr_cgroup(&keeper)).expect("bundle");
        let shim = Shim::start(&cd, &ns, &keeper, &bundle).expect("start the shim");
        let f = Fixture {
            cd,
            shim,
            ns,
            work,
            image,
            keeper: keeper.clone(),
            n: AtomicU32::new(0),
            created: std::sync::Mutex::new(Vec::new()),
            _log: LogOnPanic(bundle.join("log")),
        };
        let layer = f.layer(&keeper);
        let req = f.request(&keeper, &bundle, layer.mounts(), None);
        f.create(&req).expect("create keeper");
        f.shim.start_task(&keeper, "").expect("start keeper");
        f.assert_keeper_alive();
        Some(f)
    }

    /// A fresh container id.
    pub fn id(&self, what: &str) -> String {
        let n = self.n.fetch_add(1, Ordering::Relaxed);
        format!("{what}-{n}")
    }

    /// Fresh layers named `name` over the image.
    pub fn layer(&self, name: &str) -> Layer {
        Layer::new(&self.work.join("layers"), name, &self.image).expect("layer")
    }

    /// A bundle for container `id` running `args`.
    pub fn bundle(&self, id: &str, args: &[&str]) -> PathBuf {
        let b = self.work.join(id);
        write_bundle(&b, args, &self.cd.ctr_cgroup(id)).expect("bundle");
        b
    }

    /// A Create request; stdout and stderr go to `WORK/ID.out`.
    pub fn request(
        &self,
        id: &str,
        bundle: &Path,
        rootfs: Vec<Mount>,
        options: Option<Any>,
    ) -> CreateTaskRequest {
        let out = format!("file://{}", self.output_path(id).display());
        CreateTaskRequest {
            id: id.into(),
            bundle: bundle.to_string_lossy().into_owned(),
            rootfs,
            stdout: out.clone(),
            stderr: out,
            options: options.map(MessageField::some).unwrap_or_default(),
            ..Default::default()
        }
    }

    pub fn output_path(&self, id: &str) -> PathBuf {
        self.work.join(format!("{id}.out"))
    }

    pub fn output(&self, id: &str) -> String {
        std::fs::read_to_string(self.output_path(id)).unwrap_or_default()
    }

    /// Create, remembering the id for the final cleanup.
    pub fn create(&self, req: &CreateTaskRequest) -> CallResult<CreateTaskResponse> {
        self.created.lock().unwrap().push(req.id.clone());
        self.shim.create(req)
    }

    /// Wait for the init of `id` and delete it; returns its exit status.
    pub fn wait_and_delete(&self, id: &str) -> u32 {
        let w = self
            .shim
            .wait(id, "", Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("wait {id}: {e}"));
        self.shim
            .delete(id, "")
            .unwrap_or_else(|e| panic!("delete {id}: {e}"));
        w.exit_status
    }

    /// The keeper still runs and still execs.
    pub fn assert_keeper_alive(&self) {
        let st = self.shim.state(&self.keeper, "").expect("State of keeper");
        assert_eq!(status_of(&st), api::Status::RUNNING, "keeper: {st:?}");
        let exec_id = format!("alive-{}", self.n.fetch_add(1, Ordering::Relaxed));
        let (code, out) = self
            .shim
            .exec_sync(&self.keeper, &exec_id, &["echo", "alive"], &self.work)
            .unwrap_or_else(|e| panic!("exec in keeper: {e}"));
        assert_eq!((code, out.as_str()), (0, "alive\n"), "exec in keeper");
    }

    /// Mounts below the work directory (the bundles' rootfs).
    pub fn mounts(&self) -> Vec<String> {
        sys::mounts_under(&self.work)
            .into_iter()
            .filter(|m| m.mount_point.starts_with(&self.work))
            .map(|m| m.mount_point.display().to_string())
            .collect()
    }

    /// Wait until nothing is mounted at `bundle/rootfs`.
    pub fn wait_unmounted(&self, bundle: &Path, timeout: Duration) -> Result<()> {
        let target = bundle.join("rootfs");
        let deadline = Instant::now() + timeout;
        loop {
            if !sys::mounts().iter().any(|m| m.mount_point == target) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{} still mounted after {timeout:?}", target.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The shim's log so far.
    pub fn shim_log(&self) -> String {
        std::fs::read_to_string(self.work.join(&self.keeper).join("log")).unwrap_or_default()
    }

    /// Remove every container the test created (killing live ones), shut the
    /// shim down, and require that nothing is left: no shim, mount, socket,
    /// runc state, cgroup.
    pub fn finish(self) {
        let ids = self.created.lock().unwrap().clone();
        for id in ids.iter().rev() {
            if let Ok(st) = self.shim.state(id, "") {
                if matches!(
                    status_of(&st),
                    api::Status::RUNNING | api::Status::CREATED | api::Status::PAUSED
                ) {
                    let _ = self.shim.kill(id, "", 9);
                    let _ = self.shim.wait(id, "", Duration::from_secs(10));
                }
                if let Err(e) = self.shim.delete(id, "") {
                    panic!("final delete of {id}: {e}\n{}", self.shim_log());
                }
            }
        }
        let shims = self.cd.brisk_shim_pids();
        let _ = self.shim.shutdown();
        assert!(
            sys::wait_gone(&shims, Duration::from_secs(70)),
            "shim did not exit after Shutdown\n{}",
            self.shim_log()
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.mounts().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let left = self.mounts();
        assert!(
            left.is_empty(),
            "mounts left: {left:?}\n{}",
            self.shim_log()
        );
        assert!(
            !self.shim.socket.exists(),
            "shim socket {} left",
            self.shim.socket.display()
        );
        if let Err(e) = self.cd.wait_no_leaks(Duration::from_secs(10)) {
            panic!("{e:#}\n--- shim log ---\n{}", self.shim_log());
        }
        let Fixture { cd, shim, .. } = self;
        drop(shim);
        cd.finish();
    }
}

/// Prints the direct shim's log when a test panics.
struct LogOnPanic(PathBuf);

impl Drop for LogOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.0).unwrap_or_default();
            eprintln!("--- direct shim log ---\n{log}\n--- end ---");
        }
    }
}
