//! Typed views of what runc prints and of the options it takes.

use std::{collections::HashMap, os::fd::OwnedFd, path::PathBuf};

use serde::{Deserialize, Serialize};

/// Output of `runc state`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ContainerState {
    pub id: String,
    #[serde(default)]
    pub pid: i32,
    /// created, running, pausing, paused or stopped.
    pub status: String,
    #[serde(default)]
    pub bundle: String,
    #[serde(default)]
    pub rootfs: String,
    #[serde(default)]
    pub created: String,
    #[serde(default)]
    pub annotations: Option<HashMap<String, String>>,
}

/// The `data` of one `runc events --stats` record. Only what the shim reports
/// is typed; unknown fields are ignored so newer runc versions still decode.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Stats {
    #[serde(default)]
    pub cpu: CpuStats,
    #[serde(default)]
    pub memory: MemoryStats,
    #[serde(default)]
    pub pids: PidsStats,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CpuStats {
    #[serde(default)]
    pub usage: CpuUsage,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CpuUsage {
    #[serde(default)]
    pub total: u64,
    #[serde(default)]
    pub kernel: u64,
    #[serde(default)]
    pub user: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct MemoryStats {
    #[serde(default)]
    pub cache: u64,
    #[serde(default)]
    pub usage: MemoryEntry,
    #[serde(default)]
    pub raw: HashMap<String, u64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct MemoryEntry {
    #[serde(default)]
    pub limit: u64,
    #[serde(default)]
    pub usage: u64,
    #[serde(default)]
    pub max: u64,
    #[serde(default)]
    pub failcnt: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PidsStats {
    #[serde(default)]
    pub current: u64,
    #[serde(default)]
    pub limit: u64,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Event {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub data: Option<Stats>,
}

/// The three standard streams given to a container's or exec's process.
/// `None` means /dev/null.
#[derive(Debug, Default)]
pub struct ProcessIo {
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

/// Options of `runc create`.
#[derive(Debug, Default)]
pub struct CreateOpts {
    pub pid_file: PathBuf,
    /// Unix socket on which runc sends the pty master of a terminal process.
    pub console_socket: Option<PathBuf>,
    pub no_pivot: bool,
    pub no_new_keyring: bool,
    pub io: ProcessIo,
}

/// Options of `runc exec --detach`.
#[derive(Debug, Default)]
pub struct ExecOpts {
    pub pid_file: PathBuf,
    pub console_socket: Option<PathBuf>,
    pub io: ProcessIo,
}
