//! The Task API v2 served to containerd.
//!
//! Every handler follows the same pattern: take the container's lock, read or
//! change its state, let go, and only then call runc or do I/O. So a slow
//! runc call or unmount on one container never blocks calls that only need
//! state, and never blocks the pod's other containers.

use std::{
    collections::{HashMap, HashSet},
    future::Future,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant, SystemTime},
};

use async_trait::async_trait;
use containerd_shim::{asynchronous::ExitSignal, util::convert_to_timestamp};
use containerd_shim_protos::{
    api::{self, DeleteResponse, Empty},
    events::task::{
        TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM,
        TaskPaused, TaskResumed, TaskStart,
    },
    protobuf::{well_known_types::timestamp::Timestamp, MessageField},
    shim_async::Task,
    topics,
    ttrpc::{self, r#async::TtrpcContext},
};
use oci_spec::runtime::LinuxResources;
use runc_wrapper::{CreateOpts, ExecOpts, ProcessIo, Runc, RuncError};
use tracing::{debug, info, warn};

use crate::{
    bundle_spec::{BundleSpec, ExecProcessSpec},
    cgroup::{self, OomWatch},
    config::RuntimeConfig,
    container::{self, Container, Process},
    detached::{Detached, WorkKey},
    error::{Result, ShimError},
    events::EventSink,
    process_state::{Event, ExitInfo, ProcessState},
    reaper::{Exit, Reaper},
    rootfs::{self, MountedRootfs},
    stdio::{self, ConsoleSocket, StdioPaths},
    volatile,
};

/// How long Create waits for runc to send a terminal's pty master.
const CONSOLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a Create, or a shim about to exit, waits for detached cleanup
/// (unmounts, runc deletes) before going on regardless.
const WORK_WAIT: Duration = Duration::from_secs(60);

type Shared<T> = Arc<Mutex<T>>;

/// The task service of one shim, i.e. of one pod.
#[derive(Clone)]
pub struct TaskService {
    inner: Arc<Inner>,
}

struct Inner {
    namespace: String,
    containers: Mutex<HashMap<String, Shared<Container>>>,
    reaper: Reaper,
    events: EventSink,
    exit: Arc<ExitSignal>,
    detached: Detached,
    /// Ids whose Create is running.
    creating: Mutex<HashSet<String>>,
    /// Calls that talk to runc, running now.
    in_flight: AtomicUsize,
}

struct Reservation {
    inner: Arc<Inner>,
    id: String,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.inner.creating.lock().unwrap().remove(&self.id);
    }
}

/// Counts a call on a container that has not answered yet; Delete of the
/// container waits for it. containerd closes the task's connection once
/// Delete answers, and a call still owed an answer then fails with "ttrpc:
/// closed", which CRI reports as an unknown error, not as "exited already".
struct CallInFlight(Shared<Container>);

impl CallInFlight {
    fn new(c: &Shared<Container>) -> Self {
        container::lock(c).calls_in_flight += 1;
        CallInFlight(c.clone())
    }
}

impl Drop for CallInFlight {
    fn drop(&mut self) {
        container::lock(&self.0).calls_in_flight -= 1;
    }
}

/// How a runc call on a live container ended.
enum Outcome<T> {
    /// runc answered first.
    Done(T),
    /// The container's init exited first; runc goes on detached.
    Exited,
}

impl<T> Outcome<T> {
    /// runc's answer, or "exiting" for a container that exited meanwhile.
    fn or_exiting(self, id: &str) -> Result<T> {
        match self {
            Outcome::Done(v) => Ok(v),
            Outcome::Exited => Err(ShimError::Exiting(id.to_string())),
        }
    }
}

struct Busy(Arc<Inner>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

fn timestamp(at: SystemTime) -> MessageField<Timestamp> {
    MessageField::some(convert_to_timestamp(Some(at.into())))
}

/// Logs the latency of a call that containerd's CRI makes under its locks.
struct Timed(&'static str, Instant, String);

impl Drop for Timed {
    fn drop(&mut self) {
        debug!(call = self.0, id = %self.2, took = ?self.1.elapsed(), "task call");
    }
}

impl TaskService {
    pub fn new(
        namespace: String,
        reaper: Reaper,
        events: EventSink,
        exit: Arc<ExitSignal>,
        detached: Detached,
    ) -> Self {
        TaskService {
            inner: Arc::new(Inner {
                namespace,
                containers: Mutex::new(HashMap::new()),
                reaper,
                events,
                exit,
                detached,
                creating: Mutex::new(HashSet::new()),
                in_flight: AtomicUsize::new(0),
            }),
        }
    }

    /// Claims `id` for a Create until it returns, so two Creates of one id
    /// cannot both reach runc (the loser's cleanup would kill the winner).
    /// While any Create runs, the shim does not exit.
    fn reserve(&self, id: &str) -> Result<Reservation> {
        let containers = self.inner.containers.lock().unwrap();
        let mut creating = self.inner.creating.lock().unwrap();
        if containers.contains_key(id) || !creating.insert(id.to_string()) {
            return Err(ShimError::AlreadyExists(format!("container {id}")));
        }
        Ok(Reservation {
            inner: self.inner.clone(),
            id: id.to_string(),
        })
    }

    /// Marks a call that talks to runc as running; the shim does not exit
    /// under it (containerd would see the connection close mid-call).
    fn busy(&self) -> Busy {
        self.inner.in_flight.fetch_add(1, Ordering::SeqCst);
        Busy(self.inner.clone())
    }

    fn container(&self, id: &str) -> Result<Shared<Container>> {
        self.inner
            .containers
            .lock()
            .unwrap()
            .get(id)
            .cloned()
            .ok_or_else(|| ShimError::ContainerNotFound(id.to_string()))
    }

    /// Waits for detached work of a previous container on the same id, bundle
    /// or snapshot: the new one must neither collide with nor be undone by
    /// that cleanup.
    async fn wait_work_free(&self, id: &str, keys: &[WorkKey]) {
        let started = Instant::now();
        if !self.inner.detached.wait_free(keys, WORK_WAIT).await {
            warn!(id, waited = ?started.elapsed(), "cleanup of a previous container on the same id or rootfs is still running; going on");
        } else if started.elapsed() > Duration::from_millis(100) {
            info!(id, waited = ?started.elapsed(), "waited for the cleanup of a previous container");
        }
    }

    /// Called by the exit watcher of a process once the reaper saw it exit.
    fn on_exit(&self, c: &Shared<Container>, exec_id: &str, exit: Exit) {
        let info = ExitInfo {
            status: exit.status as u32,
            at: exit.at,
        };
        let mut g = container::lock(c);
        let id = g.id.clone();
        let Ok(p) = g.process_mut(exec_id) else {
            return;
        };
        if let Err(e) = p.apply(Event::Exit(info)) {
            debug!(id, exec_id, error = %e, "exit of a process no longer tracked");
            return;
        }
        info!(
            id,
            exec_id,
            pid = exit.pid,
            status = exit.status,
            "process exited"
        );
        self.publish_exits(&mut g);
    }

    /// Publishes the TaskExit of every process whose exit may be told now:
    /// execs at once; the init only once its TaskStart is out and its execs
    /// are gone (as the stock shim does). Called with the container locked,
    /// so each exit is published exactly once.
    fn publish_exits(&self, g: &mut Container) {
        let init_ready = !g.init.start_pending && !g.has_running_execs();
        let id = g.id.clone();
        let mut remove_runc_state = false;
        let execs = g.execs.values_mut().map(|p| (p, false));
        let init = std::iter::once((&mut g.init, true));
        // A kill that caused an exit is told before the exit, and while the
        // cgroup still exists (runc delete follows the init's TaskExit).
        if let Some(oom) = &g.oom {
            oom.flush();
        }
        for (p, is_init) in execs.chain(init) {
            let ProcessState::Exiting(exit) = p.state else {
                continue;
            };
            if is_init && !init_ready {
                continue;
            }
            let _ = p.apply(Event::ExitPublished);
            if is_init {
                remove_runc_state = true;
            }
            self.inner.events.send(
                topics::TASK_EXIT_EVENT_TOPIC,
                TaskExit {
                    container_id: id.clone(),
                    id: p.id.clone(),
                    pid: p.pid as u32,
                    exit_status: exit.status,
                    exited_at: timestamp(exit.at),
                    ..Default::default()
                },
            );
        }
        if remove_runc_state {
            g.runc_deleted = Some(self.delete_runc_state_early(g.runc.clone(), id));
        }
    }

    /// `runc delete` of a container whose init exited, started as soon as
    /// its exit is published rather than when containerd's Delete comes:
    /// CRI calls Delete on the exit and reports EXITED only once Delete
    /// returns, so the exit event's way through containerd and runc's tens
    /// of milliseconds overlap instead of adding up. Nothing runs in the
    /// container any more: the start and the execs are done (the exit is
    /// published only then), and for a container sharing a pid namespace
    /// runc kills what is left, as the stock shim does at the exit.
    ///
    /// Delete still waits for the outcome, so that containerd keeps the
    /// task, and cleans up after the shim itself, should the shim die
    /// meanwhile. The job keeps the id busy, so a new container of that id
    /// waits, and the shim waits for it before it exits.
    fn delete_runc_state_early(
        &self,
        runc: Runc,
        id: String,
    ) -> tokio::sync::watch::Receiver<Option<bool>> {
        let (tx, rx) = tokio::sync::watch::channel(None);
        let job = self
            .inner
            .detached
            .begin(vec![WorkKey::Container(id.clone())]);
        tokio::spawn(async move {
            let _job = job;
            let started = Instant::now();
            let gone = match runc_delete_or_force(&runc, &id, false).await {
                Ok(()) => true,
                Err(e) if e.is_not_found() => true,
                Err(e) => {
                    tracing::error!(id, error = %e, "runc delete --force failed");
                    false
                }
            };
            info!(id, took = ?started.elapsed(), gone, "runc state removed at the exit");
            let _ = tx.send(Some(gone));
        });
        rx
    }

    /// A runc call on a container failed. If the container exited while
    /// runc ran, that is the answer: the task is exiting (NotFound), never an
    /// unknown error that CRI would turn into an Unknown container.
    fn runc_failed(&self, c: &Shared<Container>, id: &str, err: RuncError) -> ShimError {
        let exited = !container::lock(c).init.state.is_alive() || err.is_not_running();
        if exited {
            debug!(id, error = %err, "runc call raced with the container's exit");
            ShimError::Exiting(id.to_string())
        } else {
            ShimError::Runc(err)
        }
    }

    /// Runs a runc call on a live container and answers as soon as runc is
    /// done or the container's init exits, whichever comes first. After the
    /// exit the answer is known without runc: the task is exiting. Waiting
    /// for runc instead would hold up Delete, which waits for every call in
    /// flight, and with it containerd's exit handling, behind a runc that
    /// may be slow or hung. runc then goes on detached, counted as work on
    /// the container id so that the shim does not exit under it.
    async fn runc_until_exit<T, F>(
        &self,
        c: &Shared<Container>,
        id: &str,
        call: F,
    ) -> Result<Outcome<T>>
    where
        T: Send + 'static,
        F: Future<Output = std::result::Result<T, RuncError>> + Send + 'static,
    {
        let _call = CallInFlight::new(c);
        let mut exited = container::lock(c).init.subscribe_exit();
        let job = self
            .inner
            .detached
            .begin(vec![WorkKey::Container(id.to_string())]);
        let mut runc = tokio::spawn(async move {
            let _job = job;
            call.await
        });
        tokio::select! {
            biased;
            joined = &mut runc => match joined {
                Ok(Ok(v)) => Ok(Outcome::Done(v)),
                Ok(Err(e)) => Err(self.runc_failed(c, id, e)),
                Err(e) => Err(ShimError::Other(format!("runc call on {id}: {e}"))),
            },
            _ = exited.wait_for(Option::is_some) => {
                debug!(id, "container exited while runc ran; answering without waiting for runc");
                Ok(Outcome::Exited)
            }
        }
    }

    /// Pause (freeze) or resume (thaw) every process of a container.
    async fn set_frozen(&self, id: &str, frozen: bool) -> Result<()> {
        let _busy = self.busy();
        let c = self.container(id)?;
        let event = if frozen { Event::Pause } else { Event::Resume };
        let runc = {
            let g = container::lock(&c);
            g.init.state.next(event, id)?;
            g.runc.clone()
        };
        let owned_id = id.to_string();
        self.runc_until_exit(&c, id, async move {
            if frozen {
                runc.pause(&owned_id).await
            } else {
                runc.resume(&owned_id).await
            }
        })
        .await?
        .or_exiting(id)?;
        let _ = container::lock(&c).init.apply(event);
        let container_id = id.to_string();
        if frozen {
            let paused = TaskPaused {
                container_id,
                ..Default::default()
            };
            self.inner
                .events
                .send(topics::TASK_PAUSED_EVENT_TOPIC, paused);
        } else {
            let resumed = TaskResumed {
                container_id,
                ..Default::default()
            };
            self.inner
                .events
                .send(topics::TASK_RESUMED_EVENT_TOPIC, resumed);
        }
        Ok(())
    }

    fn watch_exit(&self, c: Shared<Container>, exec_id: String, pid: i32, since: Instant) {
        let rx = self.inner.reaper.watch(pid, since);
        let svc = self.clone();
        tokio::spawn(async move {
            if let Ok(exit) = rx.await {
                svc.on_exit(&c, &exec_id, exit);
            }
        });
    }

    fn watch_oom(&self, id: String, pid: i32) -> Option<OomWatch> {
        let events = self.inner.events.clone();
        OomWatch::start(pid as u32, move || {
            info!(id, "container OOM-killed a process");
            events.send(
                topics::TASK_OOM_EVENT_TOPIC,
                TaskOOM {
                    container_id: id.clone(),
                    ..Default::default()
                },
            );
        })
    }

    async fn create_container(&self, req: &api::CreateTaskRequest) -> Result<i32> {
        let id = req.id.clone();
        if id.is_empty() {
            return Err(ShimError::InvalidArgument("container id is empty".into()));
        }
        let _reserved = self.reserve(&id)?;
        if !req.checkpoint.is_empty() || !req.parent_checkpoint.is_empty() {
            return Err(ShimError::Unimplemented("restoring from a checkpoint"));
        }
        let bundle = PathBuf::from(&req.bundle);
        let spec = BundleSpec::load(&bundle)?;
        let cfg = RuntimeConfig::from_create_options(&self.inner.namespace, req.options.as_ref())?;
        cfg.save(&bundle)?;
        let runc = Runc::new(
            &cfg.runc_binary,
            &cfg.runc_root,
            Arc::new(self.inner.reaper.clone()),
        )
        .with_systemd_cgroup(cfg.systemd_cgroup)
        .with_timeout(Duration::from_secs(cfg.runc_timeout_secs));

        // A previous container of this id may still be leaving runc.
        self.wait_work_free(&id, &[WorkKey::Container(id.clone())])
            .await;
        let rootfs = if req.rootfs.is_empty() {
            None
        } else {
            let target = rootfs::rootfs_of(&bundle);
            let mut mounts = req.rootfs.clone();
            // The previous container of this bundle or snapshot may still be
            // unmounting; its worker must be done before we mount there.
            let workdirs: Vec<PathBuf> = mounts
                .iter()
                .flat_map(|m| &m.options)
                .filter_map(|o| o.strip_prefix("workdir="))
                .map(PathBuf::from)
                .collect();
            self.wait_work_free(&id, &rootfs::work_keys(&target, &workdirs))
                .await;
            let t = target.clone();
            let enable = cfg.volatile && volatile_wanted(&spec);
            let discard = cfg.discard_dirty_volatile_workdir;
            let started = Instant::now();
            let volatile_workdirs = tokio::task::spawn_blocking(move || {
                let workdirs = volatile::prepare(&mut mounts, enable, discard)?;
                match rootfs::mount_all(&mounts, &t) {
                    Ok(()) => Ok(workdirs),
                    Err(e) => {
                        // mount_all unmounted what it had mounted: clean.
                        volatile::clear_markers(&workdirs);
                        Err(e)
                    }
                }
            })
            .await
            .map_err(|e| ShimError::Other(format!("mount task: {e}")))??;
            info!(id, took = ?started.elapsed(), volatile = !volatile_workdirs.is_empty(), "rootfs mounted");
            Some(MountedRootfs {
                target,
                volatile_workdirs,
            })
        };

        let paths = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let mut init = Process::new(id.clone(), paths.clone(), None);
        let since = Instant::now();
        let result = self
            .run_create(&runc, &id, &bundle, &cfg, &paths, &mut init)
            .await;
        if let Err(e) = result {
            warn!(id, error = %e, "create failed, cleaning up");
            if let Err(e) = runc.delete(&id, true).await {
                debug!(id, error = %e, "runc delete after failed create");
            }
            if let Some(r) = rootfs {
                let _ = tokio::task::spawn_blocking(move || {
                    if rootfs::unmount_all(&r.target).is_ok() {
                        volatile::clear_markers(&r.volatile_workdirs);
                    }
                })
                .await;
            }
            return Err(e);
        }
        let pid = init.pid;
        let container = Arc::new(Mutex::new(Container {
            id: id.clone(),
            bundle: bundle.clone(),
            runc,
            init,
            execs: HashMap::new(),
            rootfs,
            calls_in_flight: 0,
            runc_deleted: None,
            oom: None,
        }));
        {
            let mut map = self.inner.containers.lock().unwrap();
            if map.contains_key(&id) {
                return Err(ShimError::AlreadyExists(format!("container {id}")));
            }
            map.insert(id.clone(), container.clone());
        }
        // Before the container runs: no kill can come before the watch.
        let oom = self.watch_oom(id.clone(), pid);
        container::lock(&container).oom = oom;
        self.watch_exit(container, String::new(), pid, since);
        self.inner.events.send(
            topics::TASK_CREATE_EVENT_TOPIC,
            TaskCreate {
                container_id: id.clone(),
                bundle: req.bundle.clone(),
                rootfs: req.rootfs.clone(),
                io: MessageField::some(TaskIO {
                    stdin: req.stdin.clone(),
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                    terminal: req.terminal,
                    ..Default::default()
                }),
                pid: pid as u32,
                ..Default::default()
            },
        );
        info!(id, pid, "container created");
        Ok(pid)
    }

    /// `runc create` with the process's stdio, filling in `init.pid`.
    async fn run_create(
        &self,
        runc: &Runc,
        id: &str,
        bundle: &Path,
        cfg: &RuntimeConfig,
        paths: &StdioPaths,
        init: &mut Process,
    ) -> Result<()> {
        let pid_file = bundle.join("init.pid");
        let mut opts = CreateOpts {
            pid_file: pid_file.clone(),
            no_pivot: cfg.no_pivot_root,
            no_new_keyring: cfg.no_new_keyring,
            ..Default::default()
        };
        if paths.terminal {
            let console = ConsoleSocket::new()?;
            opts.console_socket = Some(console.path().to_path_buf());
            let (created, master) = tokio::join!(runc.create(id, bundle, opts), async {
                tokio::time::timeout(CONSOLE_TIMEOUT, console.receive_master()).await
            });
            created?;
            let master = master
                .map_err(|_| ShimError::Other("runc sent no pty master within 30s".into()))??;
            init.console = Some(stdio::start_pty_copy(master, paths)?);
        } else {
            let (io, held) = stdio::open_direct(paths)?;
            opts.io = io;
            runc.create(id, bundle, opts).await?;
            init.held = held;
        }
        init.pid = read_pid(&pid_file).await?;
        Ok(())
    }

    async fn start_exec(&self, c: &Shared<Container>, exec_id: &str) -> Result<i32> {
        let (runc, id, bundle, spec, paths) = {
            let g = container::lock(c);
            g.ensure_alive()?;
            let p = g.process(exec_id)?;
            p.state.next(Event::Start, exec_id)?;
            let spec = p
                .spec
                .clone()
                .ok_or_else(|| ShimError::Other("exec has no process spec".into()))?;
            (
                g.runc.clone(),
                g.id.clone(),
                g.bundle.clone(),
                spec,
                p.stdio.clone(),
            )
        };
        let pid_file = bundle.join(format!("{exec_id}.pid"));
        let mut opts = ExecOpts {
            pid_file: pid_file.clone(),
            ..Default::default()
        };
        let since = Instant::now();
        let mut console_file = None;
        let mut held = Default::default();
        if paths.terminal {
            let console = ConsoleSocket::new()?;
            opts.console_socket = Some(console.path().to_path_buf());
            let (done, master) =
                tokio::join!(runc.exec(&id, exec_id, &bundle, spec.json(), opts), async {
                    tokio::time::timeout(CONSOLE_TIMEOUT, console.receive_master()).await
                });
            done?;
            let master = master
                .map_err(|_| ShimError::Other("runc sent no pty master within 30s".into()))??;
            console_file = Some(stdio::start_pty_copy(master, &paths)?);
        } else {
            let (io, h): (ProcessIo, _) = stdio::open_direct(&paths)?;
            opts.io = io;
            runc.exec(&id, exec_id, &bundle, spec.json(), opts).await?;
            held = h;
        }
        let pid = read_pid(&pid_file).await?;
        let _ = std::fs::remove_file(&pid_file);
        {
            let mut g = container::lock(c);
            let p = g.process_mut(exec_id)?;
            p.pid = pid;
            p.held = held;
            p.console = console_file;
            p.apply(Event::Start)?;
        }
        self.watch_exit(c.clone(), exec_id.to_string(), pid, since);
        Ok(pid)
    }

    async fn delete_process(&self, id: &str, exec_id: &str) -> Result<DeleteResponse> {
        let c = self.container(id)?;
        if !exec_id.is_empty() {
            let mut g = container::lock(&c);
            let p = g.process_mut(exec_id)?;
            p.apply(Event::Delete)?;
            let (pid, exit) = (p.pid, info_of(p));
            g.execs.remove(exec_id);
            return Ok(delete_response(pid, exit));
        }
        let (runc, pid, exit, rootfs, was_created, runc_deleted) = {
            let mut g = container::lock(&c);
            let was_created = g.init.state == ProcessState::Created;
            g.init.apply(Event::Delete)?;
            (
                g.runc.clone(),
                g.init.pid,
                info_of(&g.init),
                g.rootfs.take(),
                was_created,
                g.runc_deleted.clone(),
            )
        };
        info!(id, "deleting container");
        let waited = Instant::now();
        while container::lock(&c).calls_in_flight > 0 && waited.elapsed() < WORK_WAIT {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if waited.elapsed() > Duration::from_millis(100) {
            info!(id, waited = ?waited.elapsed(), "delete waited for calls in flight on the container");
        }
        // After an exit, runc's state is already being removed; wait for
        // that. A created container still has its init blocked in runc;
        // force kills it.
        if let Some(mut done) = runc_deleted {
            let waited = Instant::now();
            let gone = done.wait_for(Option::is_some).await.ok().and_then(|g| *g);
            debug!(id, waited = ?waited.elapsed(), "delete waited for the runc delete started at the exit");
            if gone != Some(true) {
                return Err(ShimError::Other(format!(
                    "runc delete of {id} failed; see the shim log"
                )));
            }
        } else {
            runc_delete_or_force(&runc, id, was_created).await?;
        }
        // The unmount runs detached; Delete does not wait for it.
        if let Some(r) = rootfs {
            rootfs::unmount_detached(&self.inner.detached, id.to_string(), r);
        }
        self.inner.containers.lock().unwrap().remove(id);
        self.inner.events.send(
            topics::TASK_DELETE_EVENT_TOPIC,
            TaskDelete {
                container_id: id.to_string(),
                id: id.to_string(),
                pid: pid as u32,
                exit_status: exit.status,
                exited_at: timestamp(exit.at),
                ..Default::default()
            },
        );
        info!(id, status = exit.status, "container deleted");
        Ok(delete_response(pid, exit))
    }
}

/// `runc delete` (forced when `force`), then `runc delete --force` when that
/// failed for another reason than the state being gone already.
async fn runc_delete_or_force(
    runc: &Runc,
    id: &str,
    force: bool,
) -> std::result::Result<(), RuncError> {
    match runc.delete(id, force).await {
        Ok(()) => Ok(()),
        Err(e) if e.is_not_found() => {
            debug!(id, "runc state already gone");
            Ok(())
        }
        Err(e) => {
            warn!(id, error = %e, "runc delete failed, forcing");
            runc.delete(id, true).await
        }
    }
}

/// False when the pod asked for no volatile rootfs through the annotation.
fn volatile_wanted(spec: &BundleSpec) -> bool {
    let off = spec
        .annotation(volatile::ANNOTATION)
        .is_some_and(|v| v.eq_ignore_ascii_case("false"));
    !off
}

fn info_of(p: &Process) -> ExitInfo {
    p.state.exit().unwrap_or(ExitInfo {
        status: 0,
        at: SystemTime::now(),
    })
}

fn delete_response(pid: i32, exit: ExitInfo) -> DeleteResponse {
    DeleteResponse {
        pid: pid as u32,
        exit_status: exit.status,
        exited_at: timestamp(exit.at),
        ..Default::default()
    }
}

async fn read_pid(path: &Path) -> Result<i32> {
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|e| ShimError::io(format!("read pid file {}", path.display()), e))?;
    text.trim()
        .parse()
        .map_err(|_| ShimError::Other(format!("pid file {} holds {:?}", path.display(), text)))
}

type TtrpcResult<T> = ttrpc::Result<T>;

#[async_trait]
impl Task for TaskService {
    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        let _t = Timed("create", Instant::now(), req.id.clone());
        info!(id = req.id, bundle = req.bundle, "create");
        let pid = self.create_container(&req).await?;
        Ok(api::CreateTaskResponse {
            pid: pid as u32,
            ..Default::default()
        })
    }

    async fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        let _busy = self.busy();
        let _t = Timed("start", Instant::now(), req.id.clone());
        let c = self.container(&req.id)?;
        let pid = if req.exec_id.is_empty() {
            let (runc, pid) = {
                let mut g = container::lock(&c);
                g.init.state.next(Event::Start, &req.id)?;
                // An exit seen before TaskStart is out waits for it.
                g.init.start_pending = true;
                (g.runc.clone(), g.init.pid)
            };
            let started = runc.start(&req.id).await;
            let mut g = container::lock(&c);
            g.init.start_pending = false;
            if let Err(e) = started {
                self.publish_exits(&mut g);
                return Err(ShimError::from(e).into());
            }
            // The init may already have exited; then the exit stands.
            if g.init.state == ProcessState::Created {
                g.init.apply(Event::Start)?;
            }
            self.inner.events.send(
                topics::TASK_START_EVENT_TOPIC,
                TaskStart {
                    container_id: req.id.clone(),
                    pid: pid as u32,
                    ..Default::default()
                },
            );
            self.publish_exits(&mut g);
            drop(g);
            pid
        } else {
            let pid = {
                let _call = CallInFlight::new(&c);
                self.start_exec(&c, &req.exec_id).await?
            };
            self.inner.events.send(
                topics::TASK_EXEC_STARTED_EVENT_TOPIC,
                TaskExecStarted {
                    container_id: req.id.clone(),
                    exec_id: req.exec_id.clone(),
                    pid: pid as u32,
                    ..Default::default()
                },
            );
            pid
        };
        info!(id = req.id, exec_id = req.exec_id, pid, "started");
        Ok(api::StartResponse {
            pid: pid as u32,
            ..Default::default()
        })
    }

    async fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<DeleteResponse> {
        let _busy = self.busy();
        let _t = Timed("delete", Instant::now(), req.id.clone());
        Ok(self.delete_process(&req.id, &req.exec_id).await?)
    }

    async fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        let _t = Timed("state", Instant::now(), req.id.clone());
        let c = self.container(&req.id)?;
        let g = container::lock(&c);
        let p = g.process(&req.exec_id)?;
        let mut resp = api::StateResponse {
            id: if req.exec_id.is_empty() {
                g.id.clone()
            } else {
                req.exec_id.clone()
            },
            bundle: g.bundle.display().to_string(),
            pid: p.pid as u32,
            stdin: p.stdio.stdin.clone(),
            stdout: p.stdio.stdout.clone(),
            stderr: p.stdio.stderr.clone(),
            terminal: p.stdio.terminal,
            exec_id: req.exec_id.clone(),
            ..Default::default()
        };
        resp.status = p.state.status().into();
        if let Some(exit) = p.state.exit() {
            resp.exit_status = exit.status;
            resp.exited_at = timestamp(exit.at);
        }
        Ok(resp)
    }

    async fn pids(
        &self,
        _ctx: &TtrpcContext,
        req: api::PidsRequest,
    ) -> TtrpcResult<api::PidsResponse> {
        let _busy = self.busy();
        let c = self.container(&req.id)?;
        let (runc, execs) = {
            let g = container::lock(&c);
            if !g.init.state.is_alive() {
                return Ok(api::PidsResponse::default());
            }
            let execs: HashMap<i32, String> =
                g.execs.values().map(|p| (p.pid, p.id.clone())).collect();
            (g.runc.clone(), execs)
        };
        let id = req.id.clone();
        let pids = match self
            .runc_until_exit(&c, &req.id, async move { runc.ps(&id).await })
            .await
        {
            Ok(Outcome::Done(pids)) => pids,
            // It exited while runc looked: no processes, as for a stopped task.
            Ok(Outcome::Exited) | Err(ShimError::Exiting(_)) => {
                return Ok(api::PidsResponse::default())
            }
            Err(other) => return Err(other.into()),
        };
        let processes = pids
            .into_iter()
            .map(|pid| {
                let mut info = api::ProcessInfo {
                    pid: pid as u32,
                    ..Default::default()
                };
                if let Some(exec_id) = execs.get(&pid) {
                    let details = containerd_shim_protos::shim::oci::ProcessDetails {
                        exec_id: exec_id.clone(),
                        ..Default::default()
                    };
                    if let Ok(any) = containerd_shim::util::convert_to_any(Box::new(details)) {
                        info.info = MessageField::some(any);
                    }
                }
                info
            })
            .collect();
        Ok(api::PidsResponse {
            processes,
            ..Default::default()
        })
    }

    async fn pause(&self, _ctx: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<Empty> {
        self.set_frozen(&req.id, true).await?;
        Ok(Empty::new())
    }

    async fn resume(&self, _ctx: &TtrpcContext, req: api::ResumeRequest) -> TtrpcResult<Empty> {
        self.set_frozen(&req.id, false).await?;
        Ok(Empty::new())
    }

    async fn checkpoint(
        &self,
        _ctx: &TtrpcContext,
        _req: api::CheckpointTaskRequest,
    ) -> TtrpcResult<Empty> {
        Err(ShimError::Unimplemented("checkpoint (brisk does not checkpoint containers)").into())
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<Empty> {
        let _busy = self.busy();
        let _t = Timed("kill", Instant::now(), req.id.clone());
        let c = self.container(&req.id)?;
        let (runc, pid) = {
            let g = container::lock(&c);
            let p = g.process(&req.exec_id)?;
            if !p.state.is_alive() {
                return Err(
                    ShimError::Exiting(format!("{}: process already finished", req.id)).into(),
                );
            }
            (g.runc.clone(), p.pid)
        };
        info!(
            id = req.id,
            exec_id = req.exec_id,
            signal = req.signal,
            all = req.all,
            "kill"
        );
        if req.exec_id.is_empty() {
            // An exit while runc runs answers the Kill: the signal landed,
            // or is moot.
            let (id, signal, all) = (req.id.clone(), req.signal, req.all);
            self.runc_until_exit(
                &c,
                &req.id,
                async move { runc.kill(&id, signal, all).await },
            )
            .await?;
        } else if pid > 0 {
            // An exec is the shim's child until reaped, so its pid cannot be reused.
            let sig = nix::sys::signal::Signal::try_from(req.signal as i32).map_err(|_| {
                ShimError::InvalidArgument(format!("invalid signal {}", req.signal))
            })?;
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig)
                .map_err(|e| ShimError::io(format!("kill exec {}", req.exec_id), e.into()))?;
        }
        Ok(Empty::new())
    }

    async fn exec(&self, _ctx: &TtrpcContext, req: api::ExecProcessRequest) -> TtrpcResult<Empty> {
        let _busy = self.busy();
        let c = self.container(&req.id)?;
        if req.exec_id.is_empty() {
            return Err(ShimError::InvalidArgument("exec id is empty".into()).into());
        }
        let spec = ExecProcessSpec::parse(&req.spec.value).map_err(|e| {
            ShimError::InvalidArgument(format!("exec {} process spec: {e}", req.exec_id))
        })?;
        {
            let mut g = container::lock(&c);
            g.ensure_alive()?;
            if g.execs.contains_key(&req.exec_id) {
                return Err(ShimError::AlreadyExists(format!(
                    "exec {} in container {}",
                    req.exec_id, req.id
                ))
                .into());
            }
            let paths = StdioPaths {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
            };
            g.execs.insert(
                req.exec_id.clone(),
                Process::new(req.exec_id.clone(), paths, Some(spec)),
            );
        }
        self.inner.events.send(
            topics::TASK_EXEC_ADDED_EVENT_TOPIC,
            TaskExecAdded {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                ..Default::default()
            },
        );
        Ok(Empty::new())
    }

    async fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> TtrpcResult<Empty> {
        let c = self.container(&req.id)?;
        let console = {
            let g = container::lock(&c);
            let p = g.process(&req.exec_id)?;
            p.console
                .as_ref()
                .map(|f| f.try_clone())
                .transpose()
                .map_err(|e| ShimError::io("dup pty master", e))?
        };
        match console {
            Some(f) => stdio::resize(&f, req.width, req.height)?,
            None => debug!(id = req.id, "resize of a process without terminal"),
        }
        Ok(Empty::new())
    }

    async fn close_io(&self, _ctx: &TtrpcContext, req: api::CloseIORequest) -> TtrpcResult<Empty> {
        let c = self.container(&req.id)?;
        let mut g = container::lock(&c);
        g.process_mut(&req.exec_id)?.held.close_stdin();
        Ok(Empty::new())
    }

    async fn update(&self, _ctx: &TtrpcContext, req: api::UpdateTaskRequest) -> TtrpcResult<Empty> {
        let _busy = self.busy();
        let _t = Timed("update", Instant::now(), req.id.clone());
        let c = self.container(&req.id)?;
        let runc = {
            let g = container::lock(&c);
            g.ensure_alive()?;
            g.runc.clone()
        };
        let resources: LinuxResources =
            serde_json::from_slice(&req.resources.value).map_err(|e| {
                ShimError::InvalidArgument(format!("update of {}: resources: {e}", req.id))
            })?;
        let id = req.id.clone();
        self.runc_until_exit(
            &c,
            &req.id,
            async move { runc.update(&id, &resources).await },
        )
        .await?
        .or_exiting(&req.id)?;
        Ok(Empty::new())
    }

    async fn wait(
        &self,
        _ctx: &TtrpcContext,
        req: api::WaitRequest,
    ) -> TtrpcResult<api::WaitResponse> {
        let c = self.container(&req.id)?;
        let mut rx = {
            let g = container::lock(&c);
            g.process(&req.exec_id)?.subscribe_exit()
        };
        let exit = loop {
            if let Some(exit) = *rx.borrow_and_update() {
                break exit;
            }
            if rx.changed().await.is_err() {
                return Err(
                    ShimError::Other(format!("{}: process gone without exit", req.id)).into(),
                );
            }
        };
        Ok(api::WaitResponse {
            exit_status: exit.status,
            exited_at: timestamp(exit.at),
            ..Default::default()
        })
    }

    async fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        let c = self.container(&req.id)?;
        let pid = {
            let g = container::lock(&c);
            g.ensure_alive()?;
            g.init.pid
        };
        let _call = CallInFlight::new(&c);
        let stats = tokio::task::spawn_blocking(move || cgroup::metrics(pid as u32))
            .await
            .map_err(|e| ShimError::Other(format!("stats task: {e}")))??;
        Ok(api::StatsResponse {
            stats: MessageField::some(stats),
            ..Default::default()
        })
    }

    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        let task_pid = self
            .container(&req.id)
            .map(|c| container::lock(&c).init.pid)
            .unwrap_or(0);
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid: task_pid as u32,
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        })
    }

    async fn shutdown(
        &self,
        _ctx: &TtrpcContext,
        _req: api::ShutdownRequest,
    ) -> TtrpcResult<Empty> {
        let remaining = self.inner.containers.lock().unwrap().len();
        if remaining > 0 {
            debug!(remaining, "shutdown ignored while containers remain");
            return Ok(Empty::new());
        }
        // Exit once pending unmounts and running calls are done, and only if
        // no new container arrived meanwhile: the socket stays served until
        // then, so a new task of this pod may still land here.
        let inner = self.inner.clone();
        tokio::spawn(async move {
            if inner.detached.wait_idle(WORK_WAIT).await > 0 {
                warn!("exiting with detached cleanup still running; containerd's cleanup unmounts the rootfs");
            }
            for _ in 0..100 {
                if inner.in_flight.load(Ordering::SeqCst) == 0
                    && inner.creating.lock().unwrap().is_empty()
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if inner.containers.lock().unwrap().is_empty()
                && inner.creating.lock().unwrap().is_empty()
            {
                info!("no containers left, shim exits");
                inner.exit.signal();
            } else {
                info!("a new container arrived while shutting down; shim stays");
            }
        });
        Ok(Empty::new())
    }
}
