//! Brisk: a containerd shim (Task API v2) that never stalls CRI on an exiting
//! container.
//!
//! Where to look:
//! - [`bootstrap`]: `start`, `delete` and serving, as containerd runs the binary.
//! - [`task_service`]: the Task API, one module per lifecycle step.
//! - [`container`], [`container_state`] and [`process_state`]: what is known
//!   about each container, the state machine of each container and that of
//!   each process.
//! - [`platform`]: what the service asks of the machine (runc, mounts).
//! - [`reaper`]: the only `waitpid` of the shim.
//! - [`detached`]: unmounts and `runc delete`s no call waits for.
//! - [`rootfs`], [`stdio`], [`cgroup_metrics`], [`events`], [`config`]: the parts.
#![warn(clippy::await_holding_lock)]

pub mod bootstrap;
pub mod bundle_spec;
pub mod cgroup_metrics;
pub mod config;
pub mod container;
pub mod container_state;
pub mod detached;
pub mod error;
pub mod events;
pub mod logging;
pub mod platform;
pub mod process_handle;
pub mod process_state;
pub mod reaper;
pub mod rootfs;
pub mod stdio;
pub mod task_service;
pub mod volatile;
