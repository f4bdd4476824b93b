//! Integration harness for the Brisk containerd shim: a private containerd
//! per test ([`Containerd`]), a blocking CRI v1 client ([`cri::Cri`]), a `ctr`
//! driver ([`ctr::Ctr`]) and host inspection helpers ([`sys`]) for leak checks.

pub mod chaos;
pub mod containerd;
pub mod cri;
pub mod ctr;
pub mod fault;
pub mod pressure;
pub mod report;
pub mod scenario;
pub mod soak;
pub mod sys;
pub mod vm;

pub use containerd::{
    brisk_shim_bin, integration_enabled, require_brisk, Containerd, Options, BRISK_HANDLER,
    RUNC_HANDLER,
};
pub use cri::{ContainerSpec, ContainerState, Cri, LinuxContainerResources, Pod};
