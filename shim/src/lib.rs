//! Brisk: a containerd shim (Task API v2) that never stalls CRI on an exiting
//! container.
//!
//! Where to look:
//! - [`bootstrap`]: the binary's actions as containerd runs it: [`start`]
//!   (stdin decoded by [`start_input`], socket by [`shim_socket`]), [`serve`],
//!   [`dead_shim`] (`delete`) and [`info`] (`-info`).
//! - [`task_service`]: the Task API, one module per lifecycle step.
//! - [`container`], [`container_state`] and [`process_state`]: what is known
//!   about each container, the state machine of each container and that of
//!   each process.
//! - [`platform`]: what the service asks of the machine (runc, mounts).
//! - [`reaper`]: the only `waitpid` of the shim.
//! - [`detached`]: unmounts and `runc delete`s no call waits for.
//! - [`rootfs`], [`stdio`], [`cgroup`], [`events`], [`config`]: the parts.
#![warn(clippy::await_holding_lock)]

pub mod bootstrap;
pub mod bundle_spec;
pub mod cgroup;
pub mod config;
pub mod container;
pub mod container_state;
pub mod dead_shim;
pub mod detached;
pub mod error;
pub mod events;
pub mod exited_teardown;
pub mod identifiers;
pub mod info;
pub mod io_owner;
pub mod log_binary;
pub mod logging;
pub mod lowerdirs;
pub mod metrics;
pub mod metrics_socket;
pub mod platform;
pub mod private_dir;
pub mod process_handle;
pub mod process_state;
pub mod protos;
pub mod reaper;
pub mod rootfs;
pub mod runc_leftovers;
pub mod serve;
pub mod shim_socket;
pub mod start;
pub mod start_input;
pub mod stdio;
pub mod task_service;
pub mod trace_context;
pub mod unmount;
pub mod volatile;
