//! SIGKILL of a pod's shim: CRI can still stop and remove the pod, and the
//! shim's `delete` leaves no mounts, sockets, cgroups or runc state behind.

use std::time::Duration;

use brisk_integration::{sys, ContainerSpec, BRISK_HANDLER, RUNC_HANDLER};

use crate::common;

fn shim_killed(handler: &str) {
    let Some(cd) = common::start(handler) else {
        return;
    };
    let cri = cd.cri();
    let pod = cri.run_pod_sandbox(handler, "shimkill").expect("pod");
    let id = cri
        .run_container(&pod, &ContainerSpec::new("victim", &["sleep", "1000"]))
        .expect("container");
    let shims = common::handler_shims(&cd, handler);
    assert_eq!(shims.len(), 1, "one shim: {shims:?}");
    cd.refresh_sockets();
    assert!(!cd.known_sockets().is_empty(), "shim socket seen");
    sys::kill(shims[0], libc::SIGKILL);
    assert!(sys::wait_gone(&shims, Duration::from_secs(10)));

    // containerd notices the dead shim, runs `shim delete`, and reports exits.
    let st = cri
        .wait_for_exited(&id, Duration::from_secs(60))
        .expect("container exited after shim death");
    assert_ne!(st.exit_code, 0, "exit code after shim death: {st:?}");
    cri.stop_pod(&pod.id)
        .expect("StopPodSandbox after shim death");
    cri.remove_pod(&pod.id)
        .expect("RemovePodSandbox after shim death");
    assert!(cri.list_pods().expect("list").is_empty());
    cd.assert_no_leaks();
    cd.finish();
}

#[test]
fn shim_sigkill_brisk() {
    shim_killed(BRISK_HANDLER);
}

/// The stock shim leaves its dead socket in /run/containerd/s (see
/// shared/ENVIRONMENT.md); run with `--ignored` to see it.
#[test]
#[ignore]
fn shim_sigkill_runc() {
    shim_killed(RUNC_HANDLER);
}
