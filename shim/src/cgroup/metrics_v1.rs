//! Stats on cgroup v1: containerd's `io.containerd.cgroups.v1.Metrics`, as
//! the stock shim reports it (CPU in nanoseconds, from cpuacct).

use cgroups_rs::fs::Subsystem;
use containerd_shim_protos::{
    cgroups::metrics::Metrics,
    protobuf::{well_known_types::any::Any, Message},
};

use crate::error::{Result, ShimError};

/// The name containerd registers `Metrics` under (its protobuf full name).
const METRICS_TYPE_URL: &str = "io.containerd.cgroups.v1.Metrics";

/// Metrics of the cgroup of `pid`, as containerd's `io.containerd.cgroups.v1.Metrics`.
pub fn collect(pid: u32) -> Result<Any> {
    let cg = containerd_shim::cgroup::get_cgroup(pid)
        .map_err(|e| ShimError::Other(format!("cgroup of pid {pid}: {e}")))?;
    let mut metrics: Metrics = containerd_shim::cgroup::collect_metrics(&cg)
        .map_err(|e| ShimError::Other(format!("cgroup metrics: {e}")))?;
    // On v1 CPU time lives in cpuacct, which the shared collector skips.
    for s in cg.subsystems() {
        if let Subsystem::CpuAcct(acct) = s {
            let a = acct.cpuacct();
            let usage = metrics
                .cpu
                .mut_or_insert_default()
                .usage
                .mut_or_insert_default();
            usage.total = a.usage;
            usage.user = a.usage_user;
            usage.kernel = a.usage_sys;
            usage.per_cpu = a
                .usage_percpu
                .split_whitespace()
                .filter_map(|v| v.parse().ok())
                .collect();
        }
    }
    Ok(Any {
        // containerd registers the type under its bare full name. Spelled
        // out rather than read by reflection, which would build protobuf's
        // descriptor pool in the shim just for this string.
        type_url: METRICS_TYPE_URL.to_string(),
        value: metrics
            .write_to_bytes()
            .map_err(|e| ShimError::Other(e.to_string()))?,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim_protos::protobuf::MessageFull;

    #[test]
    fn metrics_type_url_is_the_protobuf_full_name() {
        assert_eq!(METRICS_TYPE_URL, Metrics::descriptor().full_name());
    }
}
