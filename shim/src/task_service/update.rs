//! Update: new resources for a running container (`runc update`). Of an
//! exiting container the answer is NotFound "task is exiting", which CRI
//! takes as "exited already", never an error it would report to kubelet.

use containerd_shim_protos::api;
use oci_spec::runtime::LinuxResources;
use runc_wrapper::RuncApi;

use super::{runc_call::CallInFlight, TaskService};
use crate::{
    container,
    error::{Result, ShimError},
};

impl TaskService {
    pub(super) async fn update(&self, req: &api::UpdateTaskRequest) -> Result<()> {
        let c = self.container(&req.id)?;
        let (runc, call) = {
            let mut g = container::lock(&c);
            let call = CallInFlight::begin(&c, &mut g)?;
            (g.runc.clone(), call)
        };
        let resources: LinuxResources =
            serde_json::from_slice(&req.resources.value).map_err(|e| {
                ShimError::InvalidArgument(format!("update of {}: resources: {e}", req.id))
            })?;
        let id = req.id.clone();
        self.runc_until_exit(call, &req.id, async move {
            RuncApi::update(&*runc, &id, &resources).await
        })
        .await?
        .or_exiting(&req.id)
    }
}
