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
use tracing::{error, info, info_span, Instrument, Span};

use super::{timestamp, TaskService, Timed};
use crate::{error::ShimError, metrics, trace_context};

type TtrpcResult<T> = ttrpc::Result<T>;

/// Runs one request. A panic in it (a bug) fails that request with an
/// internal error and leaves the shim, and the pod's other containers,
/// running; the release profile unwinds for that.
/// Its duration, and whether it was answered from the exiting state, go to
/// the shim's figures (`metrics.rs`).
/// When containerd sent a W3C trace context (`trace_context.rs`), the
/// request runs in a span carrying its trace id, so each of its log lines
/// (the panic's too) says `trace_id=...`; without one there is no span and
/// nothing is allocated for it.
async fn guarded<T: Send + 'static>(
    ctx: &TtrpcContext,
    call: &'static str,
    request: impl Future<Output = Result<T, ShimError>> + Send + 'static,
) -> TtrpcResult<T> {
    let span = match trace_context::from_metadata(&ctx.metadata) {
        Some(tp) => info_span!(
            "request",
            trace_id = %tp.trace_id,
            span_id = %tp.span_id
        ),
        None => Span::none(),
    };
    let request = metrics::task_request(call, request, |e| matches!(e, ShimError::Exiting(_)));
    let work = async move {
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
    .instrument(span);
    // On a task of its own: when containerd goes away (a restart, a crash)
    // the ttrpc server drops the futures of the calls still in flight, and
    // a step cut off there would leave its state machine half moved (a
    // Start forever starting, its exit withheld for good) and its runc
    // child running on past the rollback. Detached, the step runs to its
    // end; only the answer is lost, and containerd asks again.
    match tokio::spawn(work).await {
        Ok(answer) => answer,
        Err(_) => Err(ShimError::Panicked(call).into()),
    }
}

#[async_trait]
impl Task for TaskService {
    async fn create(
        &self,
        ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        let this = self.clone();
        guarded(ctx, "create", async move {
            let _t = Timed::new("create", &req.id);
            info!(id = req.id, bundle = req.bundle, "create");
            let pid = TaskService::create(&this, &req).await?;
            Ok(api::CreateTaskResponse {
                pid: pid as u32,
                ..Default::default()
            })
        })
        .await
    }

    async fn start(
        &self,
        ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        let this = self.clone();
        guarded(ctx, "start", async move {
            let _busy = this.busy();
            let _t = Timed::new("start", &req.id);
            let pid = if req.exec_id.is_empty() {
                this.start_init(&req.id).await?
            } else {
                this.start_exec(&req.id, &req.exec_id).await?
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
        ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<DeleteResponse> {
        let this = self.clone();
        guarded(ctx, "delete", async move {
            let _busy = this.busy();
            let _t = Timed::new("delete", &req.id);
            TaskService::delete(&this, &req.id, &req.exec_id).await
        })
        .await
    }

    async fn state(
        &self,
        ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        let this = self.clone();
        guarded(ctx, "state", async move {
            let _t = Timed::new("state", &req.id);
            TaskService::state(&this, &req.id, &req.exec_id)
        })
        .await
    }

    async fn pids(
        &self,
        ctx: &TtrpcContext,
        req: api::PidsRequest,
    ) -> TtrpcResult<api::PidsResponse> {
        let this = self.clone();
        guarded(ctx, "pids", async move {
            let _busy = this.busy();
            TaskService::pids(&this, &req.id).await
        })
        .await
    }

    async fn pause(&self, ctx: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<Empty> {
        let this = self.clone();
        guarded(ctx, "pause", async move {
            let _busy = this.busy();
            this.set_frozen(&req.id, true).await?;
            Ok(Empty::new())
        })
        .await
    }

    async fn resume(&self, ctx: &TtrpcContext, req: api::ResumeRequest) -> TtrpcResult<Empty> {
        let this = self.clone();
        guarded(ctx, "resume", async move {
            let _busy = this.busy();
            this.set_frozen(&req.id, false).await?;
            Ok(Empty::new())
        })
        .await
    }

    async fn checkpoint(
        &self,
        ctx: &TtrpcContext,
        _req: api::CheckpointTaskRequest,
    ) -> TtrpcResult<Empty> {
        guarded(ctx, "checkpoint", async move {
            Err(ShimError::Unimplemented(
                "checkpoint (brisk does not checkpoint containers)",
            ))
        })
        .await
    }

    async fn kill(&self, ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<Empty> {
        let this = self.clone();
        guarded(ctx, "kill", async move {
            let _busy = this.busy();
            let _t = Timed::new("kill", &req.id);
            TaskService::kill(&this, &req.id, &req.exec_id, req.signal, req.all).await?;
            Ok(Empty::new())
        })
        .await
    }

    async fn exec(&self, ctx: &TtrpcContext, req: api::ExecProcessRequest) -> TtrpcResult<Empty> {
        let this = self.clone();
        guarded(ctx, "exec", async move {
            let _busy = this.busy();
            this.add_exec(&req)?;
            Ok(Empty::new())
        })
        .await
    }

    async fn resize_pty(
        &self,
        ctx: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> TtrpcResult<Empty> {
        let this = self.clone();
        guarded(ctx, "resize_pty", async move {
            TaskService::resize_pty(&this, &req)?;
            Ok(Empty::new())
        })
        .await
    }

    async fn close_io(&self, ctx: &TtrpcContext, req: api::CloseIORequest) -> TtrpcResult<Empty> {
        let this = self.clone();
        guarded(ctx, "close_io", async move {
            TaskService::close_io(&this, &req.id, &req.exec_id)?;
            Ok(Empty::new())
        })
        .await
    }

    async fn update(&self, ctx: &TtrpcContext, req: api::UpdateTaskRequest) -> TtrpcResult<Empty> {
        let this = self.clone();
        guarded(ctx, "update", async move {
            let _busy = this.busy();
            let _t = Timed::new("update", &req.id);
            TaskService::update(&this, &req).await?;
            Ok(Empty::new())
        })
        .await
    }

    async fn wait(
        &self,
        ctx: &TtrpcContext,
        req: api::WaitRequest,
    ) -> TtrpcResult<api::WaitResponse> {
        let this = self.clone();
        guarded(ctx, "wait", async move {
            let exit = TaskService::wait(&this, &req.id, &req.exec_id).await?;
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
        ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        let this = self.clone();
        guarded(ctx, "stats", async move {
            TaskService::stats(&this, &req.id).await
        })
        .await
    }

    async fn connect(
        &self,
        ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        let this = self.clone();
        guarded(ctx, "connect", async move {
            Ok(TaskService::connect(&this, &req.id))
        })
        .await
    }

    async fn shutdown(&self, ctx: &TtrpcContext, _req: api::ShutdownRequest) -> TtrpcResult<Empty> {
        let this = self.clone();
        guarded(ctx, "shutdown", async move {
            TaskService::shutdown(&this);
            Ok(Empty::new())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::logging::tests::Captured;

    const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn ctx(traceparent: Option<&str>) -> TtrpcContext {
        let mut metadata = HashMap::new();
        if let Some(tp) = traceparent {
            metadata.insert("traceparent".to_string(), vec![tp.to_string()]);
        }
        TtrpcContext {
            mh: Default::default(),
            metadata,
            timeout_nano: 0,
        }
    }

    /// What one request logs through `guarded`, and its answer.
    fn logged(ctx: &TtrpcContext) -> (String, TtrpcResult<()>) {
        let out = Captured::default();
        let _default = tracing::subscriber::set_default(out.subscriber());
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let answer = rt.block_on(guarded(ctx, "state", async {
            info!(id = "c1", "working");
            tokio::task::yield_now().await;
            info!(id = "c1", "done");
            Ok::<_, ShimError>(())
        }));
        (out.text(), answer)
    }

    #[test]
    fn each_line_of_a_traced_request_carries_its_trace_id() {
        let (text, answer) = logged(&ctx(Some(TRACEPARENT)));
        answer.unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        for line in lines {
            assert!(
                line.contains(
                    " trace_id=4bf92f3577b34da6a3ce929d0e0e4736 span_id=00f067aa0ba902b7 "
                ),
                "{text}"
            );
        }
    }

    #[test]
    fn no_or_a_malformed_trace_context_adds_nothing_and_fails_nothing() {
        for tp in [
            None,
            Some("garbage"),
            Some("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
        ] {
            let (text, answer) = logged(&ctx(tp));
            answer.unwrap();
            assert_eq!(text.lines().count(), 2, "{text}");
            assert!(!text.contains("trace_id"), "{tp:?}: {text}");
        }
    }

    #[test]
    fn a_panicking_request_logs_the_panic_with_its_trace_id() {
        let out = Captured::default();
        let _default = tracing::subscriber::set_default(out.subscriber());
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let answer: TtrpcResult<()> =
            rt.block_on(guarded(&ctx(Some(TRACEPARENT)), "state", async {
                panic!("a bug")
            }));
        assert!(answer.is_err());
        let text = out.text();
        assert!(
            text.contains("panicked") && text.contains("trace_id=4bf92f3577b34da6a3ce929d0e0e4736"),
            "{text}"
        );
    }
}
