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

    /// runc ran and exited non-zero. `message` is runc's own error text.
    #[error("runc {command} failed (exit status {status}): {message}")]
    Failed {
        command: String,
        status: i32,
        message: String,
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

impl RuncError {
    /// True when runc reported that the container does not exist, which callers
    /// usually treat as "already gone" rather than as a failure.
    pub fn is_not_found(&self) -> bool {
        match self {
            RuncError::Failed { message, .. } => {
                let m = message.to_ascii_lowercase();
                m.contains("does not exist") || m.contains("not found") || m.contains("no such")
            }
            _ => false,
        }
    }
}

impl RuncError {
    /// True when runc found the container stopped, e.g. because it exited
    /// while the call was on its way.
    pub fn is_not_running(&self) -> bool {
        match self {
            RuncError::Failed { message, .. } => {
                let m = message.to_ascii_lowercase();
                m.contains("not running") || m.contains("container is stopped")
            }
            _ => false,
        }
    }
}

pub type Result<T> = std::result::Result<T, RuncError>;
