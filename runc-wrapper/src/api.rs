//! The runc calls a shim makes, as a trait, so that the shim's lifecycle can
//! run against something else than the runc binary: a fake in unit tests,
//! which then need neither root nor runc. [`Runc`] is the real one.

use std::{fmt::Debug, path::Path};

use crate::{CreateOpts, ExecOpts, Result, Runc};
use async_trait::async_trait;

/// One container runtime, with the subcommands a shim uses.
#[async_trait]
pub trait RuncApi: Debug + Send + Sync {
    /// `runc create`: the container's init is set up and left blocked.
    async fn create(&self, id: &str, bundle: &Path, opts: CreateOpts) -> Result<()>;
    /// `runc start`: lets the blocked init run.
    async fn start(&self, id: &str) -> Result<()>;
    /// `runc kill`; `all` signals every process of the container.
    async fn kill(&self, id: &str, signal: u32, all: bool) -> Result<()>;
    /// `runc delete`, forced (killing what runs) with `force`.
    async fn delete(&self, id: &str, force: bool) -> Result<()>;
    /// `runc update` with the resources (OCI `LinuxResources`) as JSON,
    /// passed on as given.
    async fn update(&self, id: &str, resources_json: &[u8]) -> Result<()>;
    /// `runc exec --detach` of a process spec given as JSON.
    async fn exec(
        &self,
        id: &str,
        exec_id: &str,
        bundle: &Path,
        process_json: &[u8],
        opts: ExecOpts,
    ) -> Result<()>;
    /// `runc ps`: the pids of the container's processes.
    async fn ps(&self, id: &str) -> Result<Vec<i32>>;
    /// `runc pause`: freezes every process of the container.
    async fn pause(&self, id: &str) -> Result<()>;
    /// `runc resume`: thaws them.
    async fn resume(&self, id: &str) -> Result<()>;
}

#[async_trait]
impl RuncApi for Runc {
    async fn create(&self, id: &str, bundle: &Path, opts: CreateOpts) -> Result<()> {
        Runc::create(self, id, bundle, opts).await
    }
    async fn start(&self, id: &str) -> Result<()> {
        Runc::start(self, id).await
    }
    async fn kill(&self, id: &str, signal: u32, all: bool) -> Result<()> {
        Runc::kill(self, id, signal, all).await
    }
    async fn delete(&self, id: &str, force: bool) -> Result<()> {
        Runc::delete(self, id, force).await
    }
    async fn update(&self, id: &str, resources_json: &[u8]) -> Result<()> {
        Runc::update(self, id, resources_json).await
    }
    async fn exec(
        &self,
        id: &str,
        exec_id: &str,
        bundle: &Path,
        process_json: &[u8],
        opts: ExecOpts,
    ) -> Result<()> {
        Runc::exec(self, id, exec_id, bundle, process_json, opts).await
    }
    async fn ps(&self, id: &str) -> Result<Vec<i32>> {
        Runc::ps(self, id).await
    }
    async fn pause(&self, id: &str) -> Result<()> {
        Runc::pause(self, id).await
    }
    async fn resume(&self, id: &str) -> Result<()> {
        Runc::resume(self, id).await
    }
}
