//! What the shim knows about one container: its init process, its execs,
//! where its files are and its life (`container_state`). Guarded by a plain
//! mutex that is only ever held for a few lines and never across an await:
//! runc calls and I/O happen outside.

use std::{
    collections::HashMap,
    fs::File,
    path::PathBuf,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use runc_wrapper::RuncApi;
use tokio::sync::watch;
use tracing::warn;

use crate::{
    bundle_spec::ExecProcessSpec,
    cgroup::{ContainerCgroup, OomWatch},
    container_state::Life,
    error::{Result, ShimError},
    exited_teardown::Teardown,
    process_handle::ProcessHandle,
    process_state::{Event, ExitInfo, ProcessState},
    rootfs::MountedRootfs,
    stdio::{HeldIo, StdioPaths},
};

/// A container's init process or one of its execs.
#[derive(Debug)]
pub struct Process {
    /// The container id for the init, the exec id for an exec.
    pub id: String,
    pub pid: i32,
    pub state: ProcessState,
    pub stdio: StdioPaths,
    /// The shim's own ends of the FIFOs, released at exit.
    pub held: HeldIo,
    /// Pty master kept for ResizePty.
    pub console: Option<File>,
    /// The logging binary of a `binary://` log URI; ended when dropped.
    pub logger: Option<crate::log_binary::BinaryLogger>,
    /// The exec's process spec, until Start runs it.
    pub spec: Option<ExecProcessSpec>,
    /// The process's pidfd while it runs: Kill signals through it.
    pub handle: Option<ProcessHandle>,
    /// The exit, once its TaskExit is out (or the process is deleted).
    told: watch::Sender<Option<ExitInfo>>,
}

impl Process {
    pub fn new(id: String, stdio: StdioPaths, spec: Option<ExecProcessSpec>) -> Self {
        Process {
            id,
            pid: 0,
            state: ProcessState::Created,
            stdio,
            held: HeldIo::default(),
            console: None,
            logger: None,
            spec,
            handle: None,
            told: watch::channel(None).0,
        }
    }

    /// Applies one event of the process's state machine, with the side
    /// effects that must happen together with it.
    pub fn apply(&mut self, event: Event) -> Result<()> {
        self.state = self.state.next(event, &self.id)?;
        match event {
            Event::Exit(_) => {
                self.held.release();
                self.console = None;
                self.handle = None;
            }
            // Wait returns once the exit is told (or the process deleted
            // without one), as the stock shim's does: never before.
            Event::ExitPublished | Event::Delete if self.told.borrow().is_none() => {
                self.told.send_replace(self.state.exit());
            }
            _ => {}
        }
        Ok(())
    }

    /// A receiver that yields the exit once it is told (for Wait).
    pub fn subscribe_told(&self) -> watch::Receiver<Option<ExitInfo>> {
        self.told.subscribe()
    }
}

/// One container of the pod.
#[derive(Debug)]
pub struct Container {
    pub id: String,
    pub bundle: PathBuf,
    pub runc: Arc<dyn RuncApi>,
    pub init: Process,
    pub execs: HashMap<String, Process>,
    /// The container shares a pid namespace (the pod's, the node's): at
    /// its init's exit nothing kills the rest, so the shim does.
    pub shares_pid_ns: bool,
    /// `io_uid`/`io_gid` of the runc options, for the stdio of its execs.
    pub io_owner: (u32, u32),
    /// The container's own state machine; changed only through the
    /// transitions in `container_state`.
    pub(crate) life: Life,
    /// Bumped by every transition; whoever waits for one subscribes.
    pub(crate) changed: watch::Sender<()>,
    /// The watch of the container's OOM kills (None without a memory cgroup).
    pub oom: Option<OomWatch>,
    /// The container's cgroup, located at Create (Stats and OOM read it).
    pub cgroup: Option<ContainerCgroup>,
    /// What the shim removes itself, without `runc delete`, once the
    /// container's processes are gone; None leaves it all to runc.
    pub teardown: Option<Teardown>,
}

/// A container as the task service shares it between calls.
pub type Shared = Arc<Mutex<Container>>;

impl Container {
    pub fn new(
        id: String,
        bundle: PathBuf,
        runc: Arc<dyn RuncApi>,
        init: Process,
        rootfs: Option<MountedRootfs>,
    ) -> Self {
        Container {
            id,
            bundle,
            runc,
            init,
            execs: HashMap::new(),
            shares_pid_ns: false,
            io_owner: (0, 0),
            oom: None,
            cgroup: None,
            teardown: None,
            life: Life::created(rootfs),
            changed: watch::channel(()).0,
        }
    }

    /// The init for an empty exec id, otherwise that exec.
    pub fn process(&self, exec_id: &str) -> Result<&Process> {
        if exec_id.is_empty() {
            return Ok(&self.init);
        }
        self.execs
            .get(exec_id)
            .ok_or_else(|| self.exec_not_found(exec_id))
    }

    pub fn process_mut(&mut self, exec_id: &str) -> Result<&mut Process> {
        if exec_id.is_empty() {
            return Ok(&mut self.init);
        }
        let err = self.exec_not_found(exec_id);
        self.execs.get_mut(exec_id).ok_or(err)
    }

    fn exec_not_found(&self, exec_id: &str) -> ShimError {
        ShimError::ExecNotFound {
            id: self.id.clone(),
            exec_id: exec_id.to_string(),
        }
    }

    /// Fails with [`ShimError::Exiting`] once the init process has exited:
    /// the answer to calls that need a live container.
    pub fn ensure_alive(&self) -> Result<()> {
        if self.init.state.is_alive() {
            Ok(())
        } else {
            Err(ShimError::Exiting(self.id.clone()))
        }
    }

    /// True while an exec still runs; the init's exit event waits for them.
    pub fn has_running_execs(&self) -> bool {
        self.execs.values().any(|p| p.state.is_alive() && p.pid > 0)
    }

    /// A receiver that sees every later transition of this container.
    pub fn subscribe(&self) -> watch::Receiver<()> {
        self.changed.subscribe()
    }
}

/// A lock wait longer than this is logged: it should never happen, since
/// the lock is only held for a few lines.
const SLOW_LOCK: Duration = Duration::from_millis(100);

/// Takes a container's lock, and logs a warning when the wait was long.
pub fn lock(c: &Mutex<Container>) -> MutexGuard<'_, Container> {
    let started = Instant::now();
    let guard = c.lock().unwrap_or_else(PoisonError::into_inner);
    let waited = started.elapsed();
    if waited > SLOW_LOCK {
        warn!(id = %guard.id, ?waited, "slow container lock wait");
    }
    guard
}

/// Waits until `ready` holds for the container, re-checking at each of its
/// transitions (no polling), or until `bound` passes. Returns what `ready`
/// returned last: Some when it held.
pub async fn wait_until<T>(
    c: &Mutex<Container>,
    bound: Duration,
    mut ready: impl FnMut(&Container) -> Option<T>,
) -> Option<T> {
    let deadline = tokio::time::Instant::now() + bound;
    loop {
        let mut changed = {
            let g = lock(c);
            if let Some(v) = ready(&g) {
                return Some(v);
            }
            g.subscribe()
        };
        // The receiver was made under the lock after the check: any later
        // transition wakes it.
        match tokio::time::timeout_at(deadline, changed.changed()).await {
            Ok(Ok(())) => continue,
            Ok(Err(_)) | Err(_) => return ready(&lock(c)),
        }
    }
}
