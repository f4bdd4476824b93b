//! The life of one container, as one explicit state machine beside the
//! per-process one (`process_state`): which calls may run, which are in
//! flight, whether runc's state of the container exists and whether its
//! rootfs is mounted. Every transition is a method of the one `impl` block
//! below, called with the container locked, so each check and its change
//! happen together; a transition that is not allowed is a typed error and
//! changes nothing.
//!
//! ```text
//!                 begin_start              end_start(ok)
//!   Created ─────────────────► Starting ────────────────► Running
//!    │  ▲                        │  │                        │ (pause/resume: the
//!    │  └──── end_start(failed) ─┘  │ exited                 │  init's own machine,
//!    │ exited                       ▼                        │  begin/end_freeze)
//!    │                Exited{start_pending} ── end_start ─┐  │ exited
//!    ▼                                                    ▼  ▼
//!   Exited ◄──────────────────────────────────────────────┴──┘  (execs may still run)
//!    │ take_publishable: no Start answering, no exec running, no Delete running
//!    ▼
//!   Published ── runc: Present → Removing (early runc delete) → Gone | Failed
//!    │ begin_delete: runc Removing/Gone → await it; Failed → Removing (a retry)
//!    │ commit_delete once runc's state is gone; abort_delete: all as it was
//!    ▼
//!   Deleted: out of the registry; rootfs Mounted → Unmounting
//!
//!   Created ── begin_delete (runc delete --force) … commit_delete ──► Deleted
//! ```
//!
//! Beside the phase, the container counts its calls in flight
//! (`begin_call`/`end_call`; a call needs a live init and no Delete
//! running), and Delete waits for them to answer: containerd closes the
//! task's connection when Delete returns, and a call still owed an answer
//! would then fail with "ttrpc: closed", which CRI reports as Unknown.

use tracing::debug;

use crate::{
    container::Container,
    error::{Result, ShimError},
    process_state::{Event, ExitInfo, ProcessState},
    rootfs::MountedRootfs,
};

/// Where the container is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// `runc create` is done; the init waits in runc for Start.
    Created,
    /// `runc start` is running.
    Starting,
    /// The init runs (or is paused).
    Running,
    /// The reaper saw the init exit; its TaskExit is withheld while the
    /// Start call has not answered (`start_pending`) or an exec runs.
    Exited { start_pending: bool },
    /// The init's TaskExit is out.
    Published,
    /// Delete committed: the container is out of the registry.
    Deleted,
}

/// runc's state of the container (`<runc root>/<id>`, and its cgroups).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuncState {
    Present,
    /// A `runc delete` runs: the early one, started at the published exit,
    /// or Delete's own.
    Removing,
    Gone,
    /// The last `runc delete` failed; Delete reports it, and a retry of
    /// Delete runs `runc delete` again.
    Failed,
}

/// The rootfs the shim mounted for the container.
#[derive(Debug)]
pub enum RootfsState {
    /// The request had no mounts (the rootfs is containerd's, or a path).
    NotOurs,
    Mounted(MountedRootfs),
    /// Handed to the detached unmount worker at Delete.
    Unmounting,
}

/// The container-level state; see the module doc.
#[derive(Debug)]
pub struct Life {
    phase: Phase,
    runc: RuncState,
    rootfs: RootfsState,
    /// Calls on the container still owed an answer.
    calls: usize,
    /// A pause or resume is running.
    freezing: bool,
    /// A Delete of the container is running.
    deleting: bool,
}

impl Life {
    /// The life of a container whose `runc create` just succeeded.
    pub fn created(rootfs: Option<MountedRootfs>) -> Self {
        Life {
            phase: Phase::Created,
            runc: RuncState::Present,
            rootfs: rootfs.map_or(RootfsState::NotOurs, RootfsState::Mounted),
            calls: 0,
            freezing: false,
            deleting: false,
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn runc(&self) -> RuncState {
        self.runc
    }

    pub fn rootfs(&self) -> &RootfsState {
        &self.rootfs
    }

    pub fn calls(&self) -> usize {
        self.calls
    }
}

/// One TaskExit to publish, decided by [`Container::take_publishable`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitToPublish {
    /// The container id for the init, else the exec id.
    pub id: String,
    pub pid: i32,
    pub exit: ExitInfo,
}

/// What [`Container::take_publishable`] found.
#[derive(Debug, Default)]
pub struct Publication {
    pub exits: Vec<ExitToPublish>,
    /// The init's exit is among them: start the early `runc delete`.
    pub remove_runc_state: bool,
}

/// What Delete has to do about runc's state, decided by [`Container::begin_delete`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuncCleanup {
    /// The early delete runs or ran: wait for its outcome.
    AwaitEarly,
    /// Nobody removes it: `runc delete` now; forced when the init never
    /// ran (it is still blocked inside runc).
    Delete { force: bool },
}

/// What Delete found when it began.
#[derive(Debug)]
pub struct DeletePlan {
    pub runc: RuncCleanup,
    pub pid: i32,
    pub exit: ExitInfo,
}

fn refused(what: &str, action: &'static str, state: &'static str) -> ShimError {
    ShimError::InvalidState {
        what: what.to_string(),
        action,
        state,
    }
}

impl Container {
    /// Every transition below ends here: whoever waits for one wakes up.
    fn changed(&self) {
        self.changed.send_replace(());
    }

    /// Created → Starting: Start of the init, before `runc start`.
    pub fn begin_start(&mut self) -> Result<()> {
        self.init.state.next(Event::Start, &self.id)?;
        if self.life.phase != Phase::Created || self.life.deleting {
            return Err(refused(&self.id, "start", "being started or deleted"));
        }
        self.life.phase = Phase::Starting;
        self.changed();
        Ok(())
    }

    /// `runc start` answered. Starting → Running (or back to Created when
    /// it failed); an exit seen meanwhile stands, and its TaskExit is now
    /// free to go (after the TaskStart, which the caller sends first).
    pub fn end_start(&mut self, ok: bool) -> Result<()> {
        match self.life.phase {
            Phase::Starting if ok => {
                self.init.apply(Event::Start)?;
                self.life.phase = Phase::Running;
            }
            Phase::Starting => self.life.phase = Phase::Created,
            Phase::Exited {
                start_pending: true,
            } => {
                self.life.phase = Phase::Exited {
                    start_pending: false,
                }
            }
            _ => return Err(refused(&self.id, "end the start of", "not starting")),
        }
        self.changed();
        Ok(())
    }

    /// A call that needs the init alive (a runc call, an exec start, stats)
    /// begins; Delete waits for it to answer. Pair with [`Container::end_call`].
    pub fn begin_call(&mut self) -> Result<()> {
        if self.life.deleting || !self.init.state.is_alive() {
            return Err(ShimError::Exiting(self.id.clone()));
        }
        self.life.calls += 1;
        Ok(())
    }

    /// The call begun by [`Container::begin_call`] has its answer.
    pub fn end_call(&mut self) {
        self.life.calls = self.life.calls.saturating_sub(1);
        self.changed();
    }

    /// Pause (`frozen`) or resume is about to run runc; one at a time.
    pub fn begin_freeze(&mut self, frozen: bool) -> Result<()> {
        let event = if frozen { Event::Pause } else { Event::Resume };
        self.init.state.next(event, &self.id)?;
        if self.life.freezing {
            return Err(refused(
                &self.id,
                "pause or resume",
                "being paused or resumed",
            ));
        }
        self.life.freezing = true;
        Ok(())
    }

    /// runc paused or resumed the container (`ok`), or did not; the init's
    /// state follows only when it did and the init still lives.
    pub fn end_freeze(&mut self, frozen: bool, ok: bool) -> Result<()> {
        self.life.freezing = false;
        let event = if frozen { Event::Pause } else { Event::Resume };
        let applied = if ok && self.init.state.is_alive() {
            self.init.apply(event)
        } else {
            Ok(())
        };
        self.changed();
        applied
    }

    /// The reaper saw a process of the container exit.
    pub fn exited(&mut self, exec_id: &str, exit: ExitInfo) -> Result<()> {
        self.process_mut(exec_id)?.apply(Event::Exit(exit))?;
        if exec_id.is_empty() {
            let start_pending = self.life.phase == Phase::Starting;
            self.life.phase = Phase::Exited { start_pending };
        }
        self.changed();
        Ok(())
    }

    /// The exits that may be told now, each marked published so that it is
    /// told exactly once: an exec's at once; the init's once its Start has
    /// answered (TaskStart first) and no exec runs (as the stock shim does).
    pub fn take_publishable(&mut self) -> Publication {
        let mut out = Publication::default();
        for p in self.execs.values_mut() {
            if let ProcessState::Exiting(exit) = p.state {
                if p.apply(Event::ExitPublished).is_ok() {
                    out.exits.push(ExitToPublish {
                        id: p.id.clone(),
                        pid: p.pid,
                        exit,
                    });
                }
            }
        }
        // While a Delete runs (of a created container, whose init its
        // forced runc delete kills), the exit waits: told if it fails.
        let init_ready = self.life.phase
            == Phase::Exited {
                start_pending: false,
            }
            && !self.life.deleting
            && !self.has_running_execs();
        if init_ready {
            if let ProcessState::Exiting(exit) = self.init.state {
                if self.init.apply(Event::ExitPublished).is_ok() {
                    out.exits.push(ExitToPublish {
                        id: self.id.clone(),
                        pid: self.init.pid,
                        exit,
                    });
                    self.life.phase = Phase::Published;
                    if self.life.runc == RuncState::Present {
                        self.life.runc = RuncState::Removing;
                        out.remove_runc_state = true;
                    }
                }
            }
        }
        if !out.exits.is_empty() {
            self.changed();
        }
        out
    }

    /// Delete found the early `runc delete` failed (a runc hung past its
    /// timeout): it runs one of its own now, as it would have had the
    /// failure come before it began. True when that is now Delete's to do.
    pub fn retry_runc_removal(&mut self) -> bool {
        if self.life.runc != RuncState::Failed {
            return false;
        }
        self.life.runc = RuncState::Removing;
        self.changed();
        true
    }

    /// The `runc delete` of the early delete or of Delete ended: runc's
    /// state is gone, or it failed.
    pub fn runc_removed(&mut self, gone: bool) {
        if self.life.runc == RuncState::Removing {
            self.life.runc = if gone {
                RuncState::Gone
            } else {
                RuncState::Failed
            };
            self.changed();
        } else {
            debug!(id = self.id, state = ?self.life.runc, "runc delete outcome after the fact");
        }
    }

    /// Delete of the container begins: refused while the init runs, while
    /// its exit is not told yet (Delete never overtakes a TaskExit; the
    /// caller waits for the publication first) and while another Delete
    /// runs. Nothing is committed here: a Delete that fails leaves the
    /// container as it was, and a retry does what is left.
    pub fn begin_delete(&mut self) -> Result<DeletePlan> {
        if self.life.deleting {
            return Err(refused(&self.id, "delete", "being deleted"));
        }
        self.init.state.next(Event::Delete, &self.id)?;
        if let Phase::Exited { .. } = self.life.phase {
            return Err(refused(
                &self.id,
                "delete",
                "exited with its exit not told yet",
            ));
        }
        let force = self.life.phase == Phase::Created;
        let runc = match self.life.runc {
            RuncState::Removing | RuncState::Gone => RuncCleanup::AwaitEarly,
            RuncState::Present | RuncState::Failed => {
                self.life.runc = RuncState::Removing;
                RuncCleanup::Delete { force }
            }
        };
        self.life.deleting = true;
        self.changed();
        Ok(DeletePlan {
            runc,
            pid: self.init.pid,
            exit: self.init.state.exit().unwrap_or_else(ExitInfo::now),
        })
    }

    /// Delete succeeded (runc's state is gone): the init is deleted, the
    /// rootfs goes to the unmount worker, and the container leaves the
    /// registry.
    pub fn commit_delete(&mut self) -> Result<Option<MountedRootfs>> {
        self.init.apply(Event::Delete)?;
        let rootfs = match std::mem::replace(&mut self.life.rootfs, RootfsState::Unmounting) {
            RootfsState::Mounted(r) => Some(r),
            other => {
                self.life.rootfs = other;
                None
            }
        };
        self.life.deleting = false;
        self.life.phase = Phase::Deleted;
        self.changed();
        Ok(rootfs)
    }

    /// Delete failed: the container stays as it was, for a retry.
    pub fn abort_delete(&mut self) {
        self.life.deleting = false;
        self.changed();
    }

    /// Delete of exec `exec_id`: it must be created (never started) or stopped.
    pub fn delete_exec(&mut self, exec_id: &str) -> Result<(i32, ExitInfo)> {
        let p = self.process_mut(exec_id)?;
        p.apply(Event::Delete)?;
        let done = (p.pid, p.state.exit().unwrap_or_else(ExitInfo::now));
        self.execs.remove(exec_id);
        self.changed();
        Ok(done)
    }
}
