//! The task service on a fake machine, without root: a fake runc (which
//! can fail or hold any subcommand), fake mounts (which create the volatile
//! marker as the kernel does), the real reaper fed with made-up exits, and
//! a recorder of the events.

mod calls;
mod create;
mod delete;
mod disconnect;
mod exit;
mod fake;
mod faults;
mod shutdown;

pub use fake::{FakePlatform, FakeRunc, Fault};

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use containerd_shim::asynchronous::ExitSignal;
use containerd_shim_protos::{
    api::{self, Mount},
    events::task::{TaskDelete, TaskExit},
    protobuf::Message,
    shim::event::Envelope,
    topics,
};
use tokio::sync::mpsc;

use super::TaskService;
use crate::{
    detached::Detached,
    error::ShimError,
    events::{EventSink, Handled},
    reaper::{Exit, Reaper},
};

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

/// A bundle spec with a pid namespace of the container's own.
pub const OWN_PID_NS: &str = r#"{"ociVersion":"1.0.2","linux":{"namespaces":[{"type":"pid"}]}}"#;
/// A bundle spec that joins the pod's pid namespace (shareProcessNamespace).
pub const POD_PID_NS: &str =
    r#"{"ociVersion":"1.0.2","linux":{"namespaces":[{"type":"pid","path":"/proc/1/ns/pid"}]}}"#;

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
    /// A shim whose events containerd takes as they are queued.
    pub fn new() -> Shim {
        let (events, rx) = EventSink::channel("test".into());
        Shim::with_events(events, rx)
    }

    /// A shim whose events containerd takes only as the returned
    /// [`Handled`] says (a containerd slow to take them).
    pub fn with_events_held() -> (Shim, Handled) {
        let (events, rx, handled) = EventSink::channel_held("test".into());
        (Shim::with_events(events, rx), handled)
    }

    fn with_events(events: EventSink, rx: mpsc::UnboundedReceiver<Envelope>) -> Shim {
        let platform = Arc::new(FakePlatform::default());
        let reaper = Reaper::default();
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

    /// A Create request of `id` with its own bundle (its own pid
    /// namespace) and no rootfs mounts.
    pub fn request(&self, id: &str) -> api::CreateTaskRequest {
        self.request_with_spec(id, OWN_PID_NS)
    }

    /// The same with `spec` as the bundle's config.json.
    pub fn request_with_spec(&self, id: &str, spec: &str) -> api::CreateTaskRequest {
        let bundle = self.dir.path().join(id);
        std::fs::create_dir_all(&bundle).unwrap();
        std::fs::write(bundle.join("config.json"), spec).unwrap();
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

/// The context of a ttrpc call with no metadata and no deadline, for calls
/// made through the `Task` trait.
pub fn ctx() -> containerd_shim_protos::ttrpc::r#async::TtrpcContext {
    containerd_shim_protos::ttrpc::r#async::TtrpcContext {
        mh: Default::default(),
        metadata: Default::default(),
        timeout_nano: 0,
    }
}

/// The ttrpc code of a service error.
pub fn code(e: &ShimError) -> containerd_shim_protos::ttrpc::Code {
    e.code()
}
