//! The life of one process (a container's init or an exec), as one explicit
//! state machine. Every transition is decided in [`ProcessState::next`], so
//! the rules for "what may happen now" live in one place.
//!
//! ```text
//!  Created --start--> Running <--resume/pause--> Paused
//!     |                  |                          |
//!     +------exit--------+-----------exit-----------+
//!                        v
//!                     Exiting --exit published--> Stopped --delete--> Deleted
//! ```
//!
//! `Exiting` starts the moment the reaper sees the process exit. From then on
//! every call is answered from the recorded exit, without runc and without
//! waiting for cleanup: that is what keeps CRI from stalling on a container
//! whose rootfs is still being unmounted.

use std::time::SystemTime;

use containerd_shim_protos::api::Status;

use crate::error::{Result, ShimError};

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    pub status: u32,
    pub at: SystemTime,
}

impl ExitInfo {
    /// What is reported for a process that never ran: status 0, now.
    pub fn now() -> Self {
        ExitInfo {
            status: 0,
            at: SystemTime::now(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessState {
    /// runc created it (init) or the exec was registered; not started.
    Created,
    Running,
    Paused,
    /// The process has exited; its TaskExit event is not published yet
    /// (an init waits for its execs first).
    Exiting(ExitInfo),
    /// The exit is published; the process awaits Delete.
    Stopped(ExitInfo),
    /// Delete answered; cleanup may still run in the background.
    Deleted(ExitInfo),
}

/// What can happen to a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Start,
    Pause,
    Resume,
    Exit(ExitInfo),
    ExitPublished,
    Delete,
}

impl Event {
    fn action(&self) -> &'static str {
        match self {
            Event::Start => "start",
            Event::Pause => "pause",
            Event::Resume => "resume",
            Event::Exit(_) => "exit",
            Event::ExitPublished => "publish the exit of",
            Event::Delete => "delete",
        }
    }
}

impl ProcessState {
    /// The transition table. Returns the next state, or an error naming the
    /// action and the current state.
    pub fn next(self, event: Event, what: &str) -> Result<ProcessState> {
        use ProcessState::*;
        let next = match (self, event) {
            (Created, Event::Start) => Running,
            (Running, Event::Pause) => Paused,
            (Paused, Event::Resume) => Running,
            (Created | Running | Paused, Event::Exit(e)) => Exiting(e),
            (Exiting(e), Event::ExitPublished) => Stopped(e),
            // A created exec that never ran can be deleted; so can a stopped process.
            (Created, Event::Delete) => Deleted(ExitInfo {
                status: 0,
                at: SystemTime::now(),
            }),
            // A stopped process is deleted. So is an exiting one, but only
            // when its exit is never to be told: a created container's init
            // that its own Delete's forced `runc delete` killed (Delete of a
            // started container waits for its TaskExit, container_state).
            (Exiting(e) | Stopped(e), Event::Delete) => Deleted(e),
            (state, event) => {
                return Err(ShimError::InvalidState {
                    what: what.to_string(),
                    action: event.action(),
                    state: state.name(),
                })
            }
        };
        Ok(next)
    }

    pub fn name(&self) -> &'static str {
        match self {
            ProcessState::Created => "created",
            ProcessState::Running => "running",
            ProcessState::Paused => "paused",
            ProcessState::Exiting(_) => "exiting",
            ProcessState::Stopped(_) => "stopped",
            ProcessState::Deleted(_) => "deleted",
        }
    }

    /// The exit, once there is one.
    pub fn exit(&self) -> Option<ExitInfo> {
        match self {
            ProcessState::Exiting(e) | ProcessState::Stopped(e) | ProcessState::Deleted(e) => {
                Some(*e)
            }
            _ => None,
        }
    }

    /// What the Task API's State reports. An exiting process is STOPPED.
    pub fn status(&self) -> Status {
        match self {
            ProcessState::Created => Status::CREATED,
            ProcessState::Running => Status::RUNNING,
            ProcessState::Paused => Status::PAUSED,
            ProcessState::Exiting(_) | ProcessState::Stopped(_) | ProcessState::Deleted(_) => {
                Status::STOPPED
            }
        }
    }

    /// True while there is a live process a signal or runc call can reach.
    pub fn is_alive(&self) -> bool {
        matches!(
            self,
            ProcessState::Created | ProcessState::Running | ProcessState::Paused
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit() -> ExitInfo {
        ExitInfo {
            status: 3,
            at: SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn normal_life() {
        let s = ProcessState::Created;
        let s = s.next(Event::Start, "c").unwrap();
        let s = s.next(Event::Pause, "c").unwrap();
        let s = s.next(Event::Resume, "c").unwrap();
        let s = s.next(Event::Exit(exit()), "c").unwrap();
        assert_eq!(s.status(), Status::STOPPED);
        assert_eq!(s.exit(), Some(exit()));
        let s = s.next(Event::ExitPublished, "c").unwrap();
        let s = s.next(Event::Delete, "c").unwrap();
        assert_eq!(s, ProcessState::Deleted(exit()));
    }

    #[test]
    fn exiting_process_cannot_be_started() {
        let s = ProcessState::Exiting(exit());
        let e = s.next(Event::Start, "c1").unwrap_err();
        assert_eq!(e.to_string(), "c1: cannot start a process that is exiting");
        assert!(s.next(Event::Pause, "c1").is_err());
    }

    #[test]
    fn a_deleted_process_stays_deleted() {
        let s = ProcessState::Exiting(exit())
            .next(Event::Delete, "c")
            .unwrap();
        assert_eq!(s, ProcessState::Deleted(exit()));
        assert!(s.next(Event::ExitPublished, "c").is_err());
        assert!(s.next(Event::Delete, "c").is_err());
    }

    #[test]
    fn running_cannot_be_deleted() {
        assert!(ProcessState::Running.next(Event::Delete, "c").is_err());
        assert!(ProcessState::Running.next(Event::Start, "c").is_err());
    }

    #[test]
    fn exit_while_paused() {
        let s = ProcessState::Paused.next(Event::Exit(exit()), "c").unwrap();
        assert!(!s.is_alive());
    }
}
