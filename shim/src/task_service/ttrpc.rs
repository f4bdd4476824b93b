//! The Task API's ttrpc methods, each a thin adapter: note the call, run
//! the lifecycle step, and turn its answer into the response (errors become
//! status codes in `error.rs`).

use async_trait::async_trait;
use containerd_shim_protos::{
    api::{self, DeleteResponse, Empty},
    shim_async::Task,
    ttrpc::{self, r#async::TtrpcContext},
};
use tracing::info;

use super::{timestamp, TaskService, Timed};
use crate::error::ShimError;

type TtrpcResult<T> = ttrpc::Result<T>;

#[async_trait]
impl Task for TaskService {
    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        let _t = Timed::new("create", &req.id);
        info!(id = req.id, bundle = req.bundle, "create");
        let pid = TaskService::create(self, &req).await?;
        Ok(api::CreateTaskResponse {
            pid: pid as u32,
            ..Default::default()
        })
    }

    async fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        let _busy = self.busy();
        let _t = Timed::new("start", &req.id);
        let pid = if req.exec_id.is_empty() {
            self.start_init(&req.id).await?
        } else {
            self.start_exec(&req.id, &req.exec_id).await?
        };
        info!(id = req.id, exec_id = req.exec_id, pid, "started");
        Ok(api::StartResponse {
            pid: pid as u32,
            ..Default::default()
        })
    }

    async fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<DeleteResponse> {
        let _busy = self.busy();
        let _t = Timed::new("delete", &req.id);
        Ok(TaskService::delete(self, &req.id, &req.exec_id).await?)
    }

    async fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        let _t = Timed::new("state", &req.id);
        Ok(TaskService::state(self, &req.id, &req.exec_id)?)
    }

    async fn pids(
        &self,
        _ctx: &TtrpcContext,
        req: api::PidsRequest,
    ) -> TtrpcResult<api::PidsResponse> {
        let _busy = self.busy();
        Ok(TaskService::pids(self, &req.id).await?)
    }

    async fn pause(&self, _ctx: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<Empty> {
        let _busy = self.busy();
        self.set_frozen(&req.id, true).await?;
        Ok(Empty::new())
    }

    async fn resume(&self, _ctx: &TtrpcContext, req: api::ResumeRequest) -> TtrpcResult<Empty> {
        let _busy = self.busy();
        self.set_frozen(&req.id, false).await?;
        Ok(Empty::new())
    }

    async fn checkpoint(
        &self,
        _ctx: &TtrpcContext,
        _req: api::CheckpointTaskRequest,
    ) -> TtrpcResult<Empty> {
        Err(ShimError::Unimplemented("checkpoint (brisk does not checkpoint containers)").into())
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<Empty> {
        let _busy = self.busy();
        let _t = Timed::new("kill", &req.id);
        TaskService::kill(self, &req.id, &req.exec_id, req.signal, req.all).await?;
        Ok(Empty::new())
    }

    async fn exec(&self, _ctx: &TtrpcContext, req: api::ExecProcessRequest) -> TtrpcResult<Empty> {
        let _busy = self.busy();
        self.add_exec(&req)?;
        Ok(Empty::new())
    }

    async fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> TtrpcResult<Empty> {
        TaskService::resize_pty(self, &req)?;
        Ok(Empty::new())
    }

    async fn close_io(&self, _ctx: &TtrpcContext, req: api::CloseIORequest) -> TtrpcResult<Empty> {
        TaskService::close_io(self, &req.id, &req.exec_id)?;
        Ok(Empty::new())
    }

    async fn update(&self, _ctx: &TtrpcContext, req: api::UpdateTaskRequest) -> TtrpcResult<Empty> {
        let _busy = self.busy();
        let _t = Timed::new("update", &req.id);
        TaskService::update(self, &req).await?;
        Ok(Empty::new())
    }

    async fn wait(
        &self,
        _ctx: &TtrpcContext,
        req: api::WaitRequest,
    ) -> TtrpcResult<api::WaitResponse> {
        let exit = TaskService::wait(self, &req.id, &req.exec_id).await?;
        Ok(api::WaitResponse {
            exit_status: exit.status,
            exited_at: timestamp(exit.at),
            ..Default::default()
        })
    }

    async fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        Ok(TaskService::stats(self, &req.id).await?)
    }

    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        Ok(TaskService::connect(self, &req.id))
    }

    async fn shutdown(
        &self,
        _ctx: &TtrpcContext,
        _req: api::ShutdownRequest,
    ) -> TtrpcResult<Empty> {
        TaskService::shutdown(self);
        Ok(Empty::new())
    }
}
