//! End-to-end tests of the brisk shim (and, as a check of the harness, the
//! stock runc shim) through a private containerd. They need root; without it
//! they say so and pass. One private containerd per test; the harness runs
//! them one at a time.

mod bad_input;
mod cgroups;
mod chaos;
mod common;
mod config;
mod detached_cleanup;
mod direct;
mod exiting;
mod fds;
mod features;
mod kill;
mod lifecycle;
mod lock;
mod log_uri;
mod many_layers;
mod metrics;
mod restart;
mod shared_pid;
mod shim_kill;
mod soak;
mod trace;
mod volatile;
