//! The shim's errors, and the one place where they become ttrpc status codes.

use std::path::PathBuf;

use containerd_shim_protos::ttrpc::{self, Code};
use runc_wrapper::RuncError;

#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error("container {0} not found")]
    ContainerNotFound(String),

    #[error("exec {exec_id} not found in container {id}")]
    ExecNotFound { id: String, exec_id: String },

    #[error("{0} already exists")]
    AlreadyExists(String),

    /// The task's init process has exited; the call has no live process to act on.
    #[error("task {0} is exiting")]
    Exiting(String),

    /// A transition the state machine does not allow, e.g. start twice.
    #[error("{what}: cannot {action} a process that is {state}")]
    InvalidState {
        what: String,
        action: &'static str,
        state: &'static str,
    },

    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    #[error("bundle {path}: {reason}")]
    Bundle { path: PathBuf, reason: String },

    #[error("config {path}: {reason}")]
    Config { path: PathBuf, reason: String },

    #[error("mount {target}: {reason}")]
    Mount { target: PathBuf, reason: String },

    #[error("stdio {path}: {source}")]
    Stdio {
        path: String,
        #[source]
        source: std::io::Error,
    },

    #[error(transparent)]
    Runc(#[from] RuncError),

    /// A bug: the request panicked. Only that request fails.
    #[error("internal error: the shim's {0} call failed unexpectedly; see the shim log")]
    Panicked(&'static str),

    /// containerd gave up on the Create and deleted the id meanwhile: the
    /// Create undid its work instead of registering a container nobody
    /// would ever delete.
    #[error("container {0} was deleted while it was being created")]
    DeletedWhileCreating(String),

    /// The shim decided to exit; it takes no new container.
    #[error("the shim is shutting down")]
    ShuttingDown,

    #[error("{0} is not supported by brisk")]
    Unimplemented(&'static str),

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    #[error(transparent)]
    PrivateDir(#[from] crate::private_dir::PrivateDirError),

    #[error("{0}")]
    Other(String),
}

pub type Result<T> = std::result::Result<T, ShimError>;

impl ShimError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        ShimError::Io {
            context: context.into(),
            source,
        }
    }

    /// The ttrpc code containerd sees. containerd maps NotFound on State and
    /// Update of a task to "exited already", which is what an exiting task is.
    pub fn code(&self) -> Code {
        match self {
            ShimError::ContainerNotFound(_)
            | ShimError::ExecNotFound { .. }
            | ShimError::Exiting(_) => Code::NOT_FOUND,
            ShimError::AlreadyExists(_) => Code::ALREADY_EXISTS,
            ShimError::InvalidState { .. } => Code::FAILED_PRECONDITION,
            ShimError::InvalidArgument(_) | ShimError::Bundle { .. } | ShimError::Config { .. } => {
                Code::INVALID_ARGUMENT
            }
            ShimError::Unimplemented(_) => Code::UNIMPLEMENTED,
            ShimError::ShuttingDown => Code::UNAVAILABLE,
            ShimError::DeletedWhileCreating(_) => Code::ABORTED,
            ShimError::Panicked(_) => Code::INTERNAL,
            ShimError::Runc(e) if e.is_not_found() => Code::NOT_FOUND,
            ShimError::Runc(RuncError::Timeout { .. }) => Code::DEADLINE_EXCEEDED,
            ShimError::Runc(RuncError::Spawn { .. }) => Code::FAILED_PRECONDITION,
            ShimError::Runc(_)
            | ShimError::Mount { .. }
            | ShimError::Stdio { .. }
            | ShimError::Io { .. }
            | ShimError::PrivateDir(_)
            | ShimError::Other(_) => Code::UNKNOWN,
        }
    }
}

impl From<ShimError> for ttrpc::Error {
    fn from(e: ShimError) -> Self {
        ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), e.to_string()))
    }
}
