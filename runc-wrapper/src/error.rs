//! Errors of runc calls. Each one carries the subcommand, so an operator reading
//! the shim log knows which runc call failed and why.

use std::{io, path::PathBuf, time::Duration};

#[derive(Debug, thiserror::Error)]
pub enum RuncError {
    /// The runc binary could not be started at all (missing, not executable).
    #[error("cannot run runc binary {binary}: {source}")]
    Spawn {
        binary: PathBuf,
        #[source]
        source: io::Error,
    },

    /// runc ran and exited non-zero. `message` is runc's own error text,
    /// `kind` what it means (see [`Failure::of`]).
    #[error("runc {command} failed (exit status {status}): {message}")]
    Failed {
        command: String,
        status: i32,
        message: String,
        kind: Failure,
    },

    /// runc did not finish within the call's timeout and was killed.
    #[error("runc {command} timed out after {after:?} and was killed")]
    Timeout { command: String, after: Duration },

    /// runc succeeded but printed something we cannot decode.
    #[error("cannot decode output of runc {command}: {source}")]
    Decode {
        command: String,
        #[source]
        source: serde_json::Error,
    },

    /// I/O around the call (pipes, temporary files).
    #[error("runc {command}: {context}: {source}")]
    Io {
        command: String,
        context: String,
        #[source]
        source: io::Error,
    },

    /// The exit status of runc never reached us (the reaper dropped the watch).
    #[error("runc {command}: exit status lost")]
    ExitLost { command: String },
}

/// What a failed runc call means, decided once where runc's answer comes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// runc has no state of the container (it was never created, or is
    /// deleted already).
    NoSuchContainer,
    /// The container is not running (it exited while the call was on its way).
    NotRunning,
    /// Anything else, e.g. a process that could not be started.
    Other,
}

impl Failure {
    /// runc tells these only in its message. Only runc's (or crun's) own
    /// wording about the container counts: "executable file not found" or
    /// a missing cwd in an exec are failures of that exec, not a missing
    /// container.
    pub fn of(command: &str, message: &str) -> Failure {
        let m = message.to_ascii_lowercase();
        // runc delete/kill/state of a container whose state directory is
        // gone report the missing state file.
        let state_command = matches!(
            command,
            "delete" | "kill" | "state" | "ps" | "pause" | "resume" | "update" | "events"
        );
        // crun (1.8) says "the container `ID` is not running", reports a
        // missing container as its unreadable `status` file for every
        // command, and a kill of an exited init as the errno of the kill.
        let crun_not_running = m.contains("container `") && m.contains("` is not running");
        let crun_no_state = m.contains("/status`: no such file or directory");
        let kill_missed = command == "kill" && m.contains("no such process");
        if m.contains("container does not exist")
            || m.contains("container not found")
            || crun_no_state
            || (state_command && m.contains("no such file or directory"))
        {
            Failure::NoSuchContainer
        } else if m.contains("container not running")
            || m.contains("container is stopped")
            || m.contains("container is not running")
            || m.contains("cannot exec in a stopped container")
            || crun_not_running
            || kill_missed
        {
            Failure::NotRunning
        } else {
            Failure::Other
        }
    }
}

impl RuncError {
    /// A failure of runc itself with `message` for `command`.
    pub fn failed(command: &str, status: i32, message: String) -> Self {
        RuncError::Failed {
            command: command.into(),
            status,
            kind: Failure::of(command, &message),
            message,
        }
    }

    /// True when runc has no state of the container, which callers usually
    /// treat as "already gone" rather than as a failure.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            RuncError::Failed {
                kind: Failure::NoSuchContainer,
                ..
            }
        )
    }

    /// True when runc found the container stopped, e.g. because it exited
    /// while the call was on its way.
    pub fn is_not_running(&self) -> bool {
        matches!(
            self,
            RuncError::Failed {
                kind: Failure::NotRunning,
                ..
            }
        )
    }
}

pub type Result<T> = std::result::Result<T, RuncError>;
