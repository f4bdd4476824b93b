//! A pod whose containers share one pid namespace (`shareProcessNamespace`):
//! a container's init that exits by itself while an exec of it still runs.
//! Nothing in the kernel ends the exec (the pod's pause process is the
//! namespace's init), and the init's exit is told only once the execs are
//! gone, so the shim must kill what is left of the container at the init's
//! exit, as the stock shim does, or CRI never sees the container EXITED.

use std::time::Duration;

use brisk_integration::{ContainerSpec, BRISK_HANDLER, RUNC_HANDLER};

use crate::common;
use crate::direct::Shim;

fn init_exits_by_itself_with_an_exec_running(handler: &str) {
    let Some(cd) = common::start(handler) else {
        return;
    };
    let cri = cd.cri();
    let config = cri.shared_pid_pod_config("sharedpid");
    let pod = cri.run_pod_sandbox_with(handler, config).expect("pod");
    let c = cri
        .run_container(
            &pod,
            &ContainerSpec::sh("c", "sleep 2; exit 3").share_pod_pid(),
        )
        .expect("container");
    let shim = Shim::of_cri_container(&cd, &c).expect("connect to the pod's shim");
    shim.exec(&c, "bg", &["sleep", "1000"], None).expect("exec");
    shim.start_task(&c, "bg").expect("start exec");
    drop(shim);
    let st = cri
        .wait_for_exited(&c, Duration::from_secs(30))
        .unwrap_or_else(|e| {
            panic!(
                "{handler}: the container never showed EXITED while its exec ran on: {e:#}\n{}",
                cd.log_tail(30)
            )
        });
    assert_eq!(st.exit_code, 3, "{handler}");
    common::remove_pod_and_finish(cd, &pod);
}

#[test]
fn shared_pid_init_exit_with_exec_runc() {
    init_exits_by_itself_with_an_exec_running(RUNC_HANDLER);
}

#[test]
fn shared_pid_init_exit_with_exec_brisk() {
    init_exits_by_itself_with_an_exec_running(BRISK_HANDLER);
}
