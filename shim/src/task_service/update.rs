//! Update: new resources for a running container (`runc update`). Of an
//! exiting container the answer is NotFound "task is exiting", which CRI
//! takes as "exited already", never an error it would report to kubelet.
//!
//! The resources go to runc as containerd sent them. They are decoded here
//! only to refuse bad input with a clear error; a re-encode of the typed
//! struct would drop every field it does not model (a newer runtime-spec's
//! or runc's), and that limit would silently not be applied.

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
        let json = req.resources.value.clone();
        validate(&req.id, &json)?;
        let id = req.id.clone();
        self.runc_until_exit(call, &req.id, async move {
            RuncApi::update(&*runc, &id, &json).await
        })
        .await?
        .or_exiting(&req.id)
    }
}

/// A JSON object whose known fields have their spec types.
fn validate(id: &str, json: &[u8]) -> Result<()> {
    let bad = |e: serde_json::Error| {
        ShimError::InvalidArgument(format!("update of {id}: resources: {e}"))
    };
    let value: serde_json::Value = serde_json::from_slice(json).map_err(bad)?;
    if !value.is_object() {
        return Err(ShimError::InvalidArgument(format!(
            "update of {id}: resources: not a JSON object"
        )));
    }
    serde_json::from_value::<LinuxResources>(value).map_err(bad)?;
    Ok(())
}
