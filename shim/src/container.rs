//! What the shim knows about one container: its init process, its execs and
//! where its files are. Guarded by a plain mutex that is only ever held for a
//! few lines and never across an await: runc calls and I/O happen outside.

use std::{
    collections::HashMap,
    fs::File,
    path::PathBuf,
    sync::{Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use crate::bundle_spec::ExecProcessSpec;
use runc_wrapper::Runc;
use tokio::sync::watch;
use tracing::warn;

use crate::{
    cgroup::OomWatch,
    error::{Result, ShimError},
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
    /// The exec's process spec, until Start runs it.
    pub spec: Option<ExecProcessSpec>,
    /// Start is running runc; an exit seen meanwhile is published after TaskStart.
    pub start_pending: bool,
    exited: watch::Sender<Option<ExitInfo>>,
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
            spec,
            start_pending: false,
            exited: watch::channel(None).0,
        }
    }

    /// Applies one event of the state machine, with side effects that must
    /// happen together with it.
    pub fn apply(&mut self, event: Event) -> Result<()> {
        self.state = self.state.next(event, &self.id)?;
        if let Event::Exit(exit) = event {
            self.held.release();
            self.console = None;
            self.exited.send_replace(Some(exit));
        }
        Ok(())
    }

    /// A receiver that yields the exit once there is one (for Wait).
    pub fn subscribe_exit(&self) -> watch::Receiver<Option<ExitInfo>> {
        self.exited.subscribe()
    }
}

/// One container of the pod.
#[derive(Debug)]
pub struct Container {
    pub id: String,
    pub bundle: PathBuf,
    pub runc: Runc,
    pub init: Process,
    pub execs: HashMap<String, Process>,
    /// The rootfs, when the shim mounted it.
    pub rootfs: Option<MountedRootfs>,
    /// Calls on this container still owed an answer; Delete waits for them.
    pub calls_in_flight: usize,
    /// The outcome of the `runc delete` started once the init's exit was
    /// published (None while it runs; true when runc's state is gone).
    /// Delete waits on it instead of calling runc itself.
    pub runc_deleted: Option<watch::Receiver<Option<bool>>>,
    /// The watch of the container's OOM kills (None without a memory cgroup).
    pub oom: Option<OomWatch>,
}

impl Container {
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
