//! The task service on a fake machine, without root: a fake runc (which
//! can fail or hold any subcommand), fake mounts (which create the volatile
//! marker as the kernel does), the real reaper fed with made-up exits, and
//! a recorder of the events.

mod calls;
mod create;
mod delete;
mod exit;
mod shutdown;

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use async_trait::async_trait;
use containerd_shim::asynchronous::ExitSignal;
use containerd_shim_protos::{
    api::{self, Mount},
    events::task::{TaskDelete, TaskExit},
    protobuf::Message,
    shim::event::Envelope,
    topics,
};
use oci_spec::runtime::LinuxResources;
use runc_wrapper::{CreateOpts, ExecOpts, RuncApi, RuncError};
use tokio::sync::{mpsc, watch};

use super::TaskService;
use crate::{
    config::RuntimeConfig,
    detached::Detached,
    error::{Result, ShimError},
    events::EventSink,
    platform::Platform,
    reaper::{Exit, Reaper},
    volatile,
};

/// Fake pids lie above the kernel's pid_max, so no real process has them.
const FIRST_PID: i32 = 1 << 23;

/// What a fake runc call does besides succeeding.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Fail with this message.
    Fail(&'static str),
    /// `create`: set up the container, then fail (runc may leave state).
    FailLeavingState,
    /// `create` or `exec`: succeed without writing the pid file.
    NoPidFile,
}

/// A subcommand held by the test: calls wait in it until released.
#[derive(Debug)]
pub struct Gate {
    entered: watch::Sender<usize>,
    open: watch::Sender<bool>,
}

impl Gate {
    /// Waits until `n` calls have entered the gate.
    pub async fn entered(&self, n: usize) {
        let mut rx = self.entered.subscribe();
        within(rx.wait_for(|&e| e >= n)).await.unwrap();
    }

    pub fn release(&self) {
        self.open.send_replace(true);
    }
}

#[derive(Debug, Default)]
struct RuncState {
    /// Containers runc has state of, with their status.
    containers: HashMap<String, &'static str>,
    /// Every call, as "subcommand id".
    log: Vec<String>,
    faults: HashMap<&'static str, Vec<Fault>>,
    gates: HashMap<&'static str, Arc<Gate>>,
    next_pid: i32,
}

#[derive(Debug, Default)]
pub struct FakeRunc {
    state: Mutex<RuncState>,
}

impl FakeRunc {
    /// The next `times` calls of `sub` meet `fault`.
    pub fn fault(&self, sub: &'static str, fault: Fault, times: usize) {
        let mut s = self.state.lock().unwrap();
        s.faults
            .entry(sub)
            .or_default()
            .extend(std::iter::repeat_n(fault, times));
    }

    /// Calls of `sub` wait until the gate is released.
    pub fn hold(&self, sub: &'static str) -> Arc<Gate> {
        let gate = Arc::new(Gate {
            entered: watch::channel(0).0,
            open: watch::channel(false).0,
        });
        self.state.lock().unwrap().gates.insert(sub, gate.clone());
        gate
    }

    pub fn has_state(&self, id: &str) -> bool {
        self.state.lock().unwrap().containers.contains_key(id)
    }

    /// How many calls were "sub id".
    pub fn calls(&self, sub: &str, id: &str) -> usize {
        let call = format!("{sub} {id}");
        let s = self.state.lock().unwrap();
        s.log.iter().filter(|c| **c == call).count()
    }

    fn new_pid(&self) -> i32 {
        let mut s = self.state.lock().unwrap();
        s.next_pid += 1;
        FIRST_PID + s.next_pid
    }

    /// Records the call, waits at its gate, and returns its fault.
    async fn enter(&self, sub: &'static str, id: &str) -> Option<Fault> {
        let gate = {
            let mut s = self.state.lock().unwrap();
            s.log.push(format!("{sub} {id}"));
            s.gates.get(sub).cloned()
        };
        if let Some(g) = gate {
            g.entered.send_modify(|n| *n += 1);
            let mut open = g.open.subscribe();
            let _ = open.wait_for(|&o| o).await;
        }
        let mut s = self.state.lock().unwrap();
        let faults = s.faults.get_mut(sub)?;
        (!faults.is_empty()).then(|| faults.remove(0))
    }

    fn exists(&self, sub: &str, id: &str) -> runc_wrapper::Result<()> {
        if self.has_state(id) {
            Ok(())
        } else {
            Err(failed(sub, "container does not exist"))
        }
    }

    fn set(&self, id: &str, status: &'static str) {
        let mut s = self.state.lock().unwrap();
        s.containers.insert(id.to_string(), status);
    }

    /// A call that only needs the container to exist.
    async fn simple(&self, sub: &'static str, id: &str) -> runc_wrapper::Result<()> {
        if let Some(Fault::Fail(m)) = self.enter(sub, id).await {
            return Err(failed(sub, m));
        }
        self.exists(sub, id)
    }
}

fn failed(command: &str, message: &str) -> RuncError {
    RuncError::Failed {
        command: command.into(),
        status: 1,
        message: message.into(),
    }
}

#[async_trait]
impl RuncApi for FakeRunc {
    async fn create(&self, id: &str, _bundle: &Path, opts: CreateOpts) -> runc_wrapper::Result<()> {
        match self.enter("create", id).await {
            Some(Fault::Fail(m)) => return Err(failed("create", m)),
            Some(Fault::FailLeavingState) => {
                self.set(id, "created");
                return Err(failed("create", "container_linux.go: cannot start"));
            }
            Some(Fault::NoPidFile) => {}
            None => std::fs::write(&opts.pid_file, self.new_pid().to_string()).unwrap(),
        }
        self.set(id, "created");
        Ok(())
    }
    async fn start(&self, id: &str) -> runc_wrapper::Result<()> {
        self.simple("start", id).await?;
        self.set(id, "running");
        Ok(())
    }
    async fn kill(&self, id: &str, _signal: u32, _all: bool) -> runc_wrapper::Result<()> {
        self.simple("kill", id).await
    }
    async fn delete(&self, id: &str, force: bool) -> runc_wrapper::Result<()> {
        let sub = if force { "delete --force" } else { "delete" };
        if let Some(Fault::Fail(m)) = self.enter(sub, id).await {
            return Err(failed("delete", m));
        }
        match self.state.lock().unwrap().containers.remove(id) {
            Some(_) => Ok(()),
            None => Err(failed("delete", "container does not exist")),
        }
    }
    async fn update(&self, id: &str, _resources: &LinuxResources) -> runc_wrapper::Result<()> {
        self.simple("update", id).await
    }
    async fn exec(
        &self,
        id: &str,
        _exec_id: &str,
        _bundle: &Path,
        _process_json: &[u8],
        opts: ExecOpts,
    ) -> runc_wrapper::Result<()> {
        match self.enter("exec", id).await {
            Some(Fault::Fail(m)) => return Err(failed("exec", m)),
            Some(Fault::NoPidFile) => {}
            _ => std::fs::write(&opts.pid_file, self.new_pid().to_string()).unwrap(),
        }
        self.exists("exec", id)
    }
    async fn ps(&self, id: &str) -> runc_wrapper::Result<Vec<i32>> {
        self.simple("ps", id).await.map(|()| Vec::new())
    }
    async fn pause(&self, id: &str) -> runc_wrapper::Result<()> {
        self.simple("pause", id).await
    }
    async fn resume(&self, id: &str) -> runc_wrapper::Result<()> {
        self.simple("resume", id).await
    }
}

/// Mounts as a set of targets; a volatile overlay mount leaves its marker
/// in the workdir, as the kernel's does.
#[derive(Default)]
pub struct FakePlatform {
    pub runc: Arc<FakeRunc>,
    mounted: Mutex<HashSet<PathBuf>>,
    pub fail_mount: Mutex<Option<&'static str>>,
}

impl FakePlatform {
    pub fn mounted(&self) -> HashSet<PathBuf> {
        self.mounted.lock().unwrap().clone()
    }
}

impl Platform for FakePlatform {
    fn runc(&self, _cfg: &RuntimeConfig) -> Arc<dyn RuncApi> {
        self.runc.clone()
    }

    fn mount(&self, mounts: &[Mount], target: &Path) -> Result<()> {
        if let Some(reason) = *self.fail_mount.lock().unwrap() {
            return Err(ShimError::Mount {
                target: target.to_path_buf(),
                reason: reason.into(),
            });
        }
        std::fs::create_dir_all(target).unwrap();
        for m in mounts {
            let workdir = m.options.iter().find_map(|o| o.strip_prefix("workdir="));
            if let (Some(w), true) = (workdir, m.options.iter().any(|o| o == "volatile")) {
                std::fs::create_dir_all(volatile::marker(Path::new(w))).unwrap();
            }
        }
        self.mounted.lock().unwrap().insert(target.to_path_buf());
        Ok(())
    }

    fn unmount(&self, target: &Path) -> Result<Duration> {
        self.mounted.lock().unwrap().remove(target);
        Ok(Duration::ZERO)
    }
}

/// One event as the tests look at it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ev {
    /// TaskExit of (process id, status).
    Exit(String, u32),
    /// TaskDelete of a container, with its status.
    Delete(String, u32),
    /// Any other event, by topic.
    Other(String),
}

/// A shim of one pod on the fake machine.
pub struct Shim {
    pub svc: TaskService,
    pub platform: Arc<FakePlatform>,
    pub reaper: Reaper,
    pub exit: Arc<ExitSignal>,
    pub detached: Detached,
    events: Mutex<mpsc::UnboundedReceiver<Envelope>>,
    seen: Mutex<Vec<Ev>>,
    pub dir: tempfile::TempDir,
}

impl Shim {
    pub fn new() -> Shim {
        let platform = Arc::new(FakePlatform::default());
        let reaper = Reaper::default();
        let (events, rx) = EventSink::channel("test".into());
        let exit = Arc::new(ExitSignal::default());
        let detached = Detached::default();
        let svc = TaskService::with_platform(
            "test".into(),
            reaper.clone(),
            events,
            exit.clone(),
            detached.clone(),
            platform.clone(),
        );
        Shim {
            svc,
            platform,
            reaper,
            exit,
            detached,
            events: Mutex::new(rx),
            seen: Mutex::new(Vec::new()),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn runc(&self) -> &FakeRunc {
        &self.platform.runc
    }

    /// A Create request of `id` with its own bundle and no rootfs mounts.
    pub fn request(&self, id: &str) -> api::CreateTaskRequest {
        let bundle = self.dir.path().join(id);
        std::fs::create_dir_all(&bundle).unwrap();
        std::fs::write(bundle.join("config.json"), r#"{"ociVersion":"1.0.2"}"#).unwrap();
        api::CreateTaskRequest {
            id: id.into(),
            bundle: bundle.display().to_string(),
            ..Default::default()
        }
    }

    /// The same with a volatile overlay rootfs; returns its workdir too.
    pub fn request_with_rootfs(&self, id: &str) -> (api::CreateTaskRequest, PathBuf) {
        let mut req = self.request(id);
        let layer = self.dir.path().join(format!("{id}-layer"));
        for d in ["lower", "upper", "work"] {
            std::fs::create_dir_all(layer.join(d)).unwrap();
        }
        let dir = |d: &str| layer.join(d).display().to_string();
        req.rootfs.push(Mount {
            type_: "overlay".into(),
            source: "overlay".into(),
            options: vec![
                format!("lowerdir={}", dir("lower")),
                format!("upperdir={}", dir("upper")),
                format!("workdir={}", dir("work")),
                "volatile".into(),
            ],
            ..Default::default()
        });
        (req, layer.join("work"))
    }

    /// Create and Start of `id`; returns the init's pid.
    pub async fn run(&self, id: &str) -> i32 {
        let pid = self.svc.create(&self.request(id)).await.unwrap();
        self.svc.start_init(id).await.unwrap();
        pid
    }

    /// Adds and starts exec `exec_id` in `id`; returns its pid.
    pub async fn exec(&self, id: &str, exec_id: &str) -> i32 {
        let req = api::ExecProcessRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            spec: Some(
                containerd_shim_protos::protobuf::well_known_types::any::Any {
                    value: br#"{"args":["sleep","1000"],"cwd":"/"}"#.to_vec(),
                    ..Default::default()
                },
            )
            .into(),
            ..Default::default()
        };
        self.svc.add_exec(&req).unwrap();
        self.svc.start_exec(id, exec_id).await.unwrap()
    }

    /// The reaper sees `pid` exit with `status`; its watcher runs at once.
    pub async fn reap(&self, pid: i32, status: i32) {
        self.reaper.deliver(Exit {
            pid,
            status,
            at: SystemTime::now(),
        });
        settle().await;
    }

    /// Every event so far, in order.
    pub fn events(&self) -> Vec<Ev> {
        let mut rx = self.events.lock().unwrap();
        let mut seen = self.seen.lock().unwrap();
        while let Ok(env) = rx.try_recv() {
            let any = env.event.as_ref().unwrap();
            seen.push(match env.topic.as_str() {
                topics::TASK_EXIT_EVENT_TOPIC => {
                    let e = TaskExit::parse_from_bytes(&any.value).unwrap();
                    Ev::Exit(e.id, e.exit_status)
                }
                topics::TASK_DELETE_EVENT_TOPIC => {
                    let e = TaskDelete::parse_from_bytes(&any.value).unwrap();
                    Ev::Delete(e.id, e.exit_status)
                }
                t => Ev::Other(t.to_string()),
            });
        }
        seen.clone()
    }

    /// The TaskExit and TaskDelete events so far.
    pub fn exits_and_deletes(&self) -> Vec<Ev> {
        let keep = |e: &Ev| !matches!(e, Ev::Other(_));
        self.events().into_iter().filter(keep).collect()
    }

    /// Whether the shim decided to exit.
    pub async fn exited(&self) -> bool {
        tokio::time::timeout(Duration::from_millis(50), self.exit.wait())
            .await
            .is_ok()
    }
}

/// Lets spawned tasks (exit watchers, the early runc delete) run.
pub async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
}

/// Bounds a wait in a test: a hang fails within seconds.
pub async fn within<F: std::future::Future>(f: F) -> F::Output {
    let started = Instant::now();
    match tokio::time::timeout(Duration::from_secs(5), f).await {
        Ok(v) => v,
        Err(_) => panic!("no answer within {:?}", started.elapsed()),
    }
}

/// The ttrpc code of a service error.
pub fn code(e: &ShimError) -> containerd_shim_protos::ttrpc::Code {
    e.code()
}
