//! The Task API's ttrpc methods, each a thin adapter: note the call, run
//! the lifecycle step, and turn its answer into the response (errors become
//! status codes in `error.rs`).

use std::{future::Future, panic::AssertUnwindSafe};

use async_trait::async_trait;
use containerd_shim_protos::{
    api::{self, DeleteResponse, Empty},
    shim_async::Task,
    ttrpc::{self, r#async::TtrpcContext},
};
use futures_util::FutureExt;
use tracing::{error, info};

use super::{timestamp, TaskService, Timed};
use crate::{error::ShimError, metrics};

type TtrpcResult<T> = ttrpc::Result<T>;

/// Runs one request. A panic in it (a bug) fails that request with an
/// internal error and leaves the shim, and the pod's other containers,
/// running; the release profile unwinds for that.
/// Its duration, and whether it was answered from the exiting state, go to
/// the shim's figures (`metrics.rs`).
async fn guarded<T>(
    call: &'static str,
    request: impl Future<Output = Result<T, ShimError>>,
) -> TtrpcResult<T> {
    let request = metrics::task_request(call, request, |e| matches!(e, ShimError::Exiting(_)));
    match AssertUnwindSafe(request).catch_unwind().await {
        Ok(answer) => answer.map_err(Into::into),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            error!(
                call,
                panic = what,
                "a request panicked; it fails, the shim goes on"
            );
            Err(ShimError::Panicked(call).into())
        }
    }
}

#[async_trait]
impl Task for TaskService {
    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        guarded("create", async {
            let _t = Timed::new("create", &req.id);
            info!(id = req.id, bundle = req.bundle, "create");
            let pid = TaskService::create(self, &req).await?;
            Ok(api::CreateTaskResponse {
                pid: pid as u32,
                ..Default::default()
            })
        })
        .await
    }

    async fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        guarded("start", async {
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
        })
        .await
    }

    async fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<DeleteResponse> {
        guarded("delete", async {
            let _busy = self.busy();
            let _t = Timed::new("delete", &req.id);
            TaskService::delete(self, &req.id, &req.exec_id).await
        })
        .await
    }

    async fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        guarded("state", async {
            let _t = Timed::new("state", &req.id);
            TaskService::state(self, &req.id, &req.exec_id)
        })
        .await
    }

    async fn pids(
        &self,
        _ctx: &TtrpcContext,
        req: api::PidsRequest,
    ) -> TtrpcResult<api::PidsResponse> {
        guarded("pids", async {
            let _busy = self.busy();
            TaskService::pids(self, &req.id).await
        })
        .await
    }

    async fn pause(&self, _ctx: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<Empty> {
        guarded("pause", async {
            let _busy = self.busy();
            self.set_frozen(&req.id, true).await?;
            Ok(Empty::new())
        })
        .await
    }

    async fn resume(&self, _ctx: &TtrpcContext, req: api::ResumeRequest) -> TtrpcResult<Empty> {
        guarded("resume", async {
            let _busy = self.busy();
            self.set_frozen(&req.id, false).await?;
            Ok(Empty::new())
        })
        .await
    }

    async fn checkpoint(
        &self,
        _ctx: &TtrpcContext,
        _req: api::CheckpointTaskRequest,
    ) -> TtrpcResult<Empty> {
        guarded("checkpoint", async {
            Err(ShimError::Unimplemented(
                "checkpoint (brisk does not checkpoint containers)",
            ))
        })
        .await
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<Empty> {
        guarded("kill", async {
            let _busy = self.busy();
            let _t = Timed::new("kill", &req.id);
            TaskService::kill(self, &req.id, &req.exec_id, req.signal, req.all).await?;
            Ok(Empty::new())
        })
        .await
    }

    async fn exec(&self, _ctx: &TtrpcContext, req: api::ExecProcessRequest) -> TtrpcResult<Empty> {
        guarded("exec", async {
            let _busy = self.busy();
            self.add_exec(&req)?;
            Ok(Empty::new())
        })
        .await
    }

    async fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> TtrpcResult<Empty> {
        guarded("resize_pty", async {
            TaskService::resize_pty(self, &req)?;
            Ok(Empty::new())
        })
        .await
    }

    async fn close_io(&self, _ctx: &TtrpcContext, req: api::CloseIORequest) -> TtrpcResult<Empty> {
        guarded("close_io", async {
            TaskService::close_io(self, &req.id, &req.exec_id)?;
            Ok(Empty::new())
        })
        .await
    }

    async fn update(&self, _ctx: &TtrpcContext, req: api::UpdateTaskRequest) -> TtrpcResult<Empty> {
        guarded("update", async {
            let _busy = self.busy();
            let _t = Timed::new("update", &req.id);
            TaskService::update(self, &req).await?;
            Ok(Empty::new())
        })
        .await
    }

    async fn wait(
        &self,
        _ctx: &TtrpcContext,
        req: api::WaitRequest,
    ) -> TtrpcResult<api::WaitResponse> {
        guarded("wait", async {
            let exit = TaskService::wait(self, &req.id, &req.exec_id).await?;
            Ok(api::WaitResponse {
                exit_status: exit.status,
                exited_at: timestamp(exit.at),
                ..Default::default()
            })
        })
        .await
    }

    async fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        guarded("stats", async { TaskService::stats(self, &req.id).await }).await
    }

    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        guarded("connect", async { Ok(TaskService::connect(self, &req.id)) }).await
    }

    async fn shutdown(
        &self,
        _ctx: &TtrpcContext,
        _req: api::ShutdownRequest,
    ) -> TtrpcResult<Empty> {
        guarded("shutdown", async {
            TaskService::shutdown(self);
            Ok(Empty::new())
        })
        .await
    }
}
