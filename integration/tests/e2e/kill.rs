//! Kill of a container's init: brisk signals it through its pidfd, with no
//! runc process, where that is all `runc kill` would do (a container in a
//! pid namespace of its own, not paused), and leaves the Kill to runc where
//! runc does more: a shared pid namespace (SIGKILL reaches the whole
//! cgroup) and a paused container (thawed after the SIGKILL). The runc
//! calls are read from the fault wrapper's log, which notes every call.

use std::time::Duration;

use brisk_integration::fault::RuncWrapper;
use brisk_integration::{ContainerSpec, BRISK_HANDLER};

use crate::common;
use crate::direct::Shim;

/// A pod and a container, stopped and removed through CRI as kubelet does:
/// neither the container's nor the sandbox's StopContainer/StopPodSandbox
/// starts a `runc kill`; a container in a shared-pid pod still has one.
/// With runc's cgroupfs driver no `runc delete` starts either: the shim
/// removes the exited container's cgroups and runc state itself
/// (`exited_teardown`); with systemd's, runc deletes.
#[test]
fn stop_signals_the_init_without_runc() {
    let Some(cd) = common::start_with(BRISK_HANDLER, common::wrapper_options()) else {
        return;
    };
    let wrapper = RuncWrapper::install(&cd.dir).expect("runc wrapper");
    let cri = cd.cri();
    let pod = cri
        .run_pod_sandbox(BRISK_HANDLER, "pidfdkill")
        .expect("pod");
    let c = cri
        .run_container(&pod, &ContainerSpec::new("c", &["sleep", "1000"]))
        .expect("c");
    cri.stop_container(&c, 0).expect("StopContainer");
    let st = cri
        .wait_for_exited(&c, Duration::from_secs(30))
        .expect("c exited");
    assert_eq!(st.exit_code, 137, "SIGKILLed");
    cri.remove_container(&c).expect("RemoveContainer");
    cri.stop_pod(&pod.id).expect("StopPodSandbox");
    cri.remove_pod(&pod.id).expect("RemovePodSandbox");

    let of_c = wrapper.calls_of(&c);
    let of_pod = wrapper.calls_of(&pod.id);
    eprintln!("runc calls of the container: {of_c:?}; of the sandbox: {of_pod:?}");
    let want: &[&str] = match cd.cgroup_driver {
        brisk_integration::containerd::CgroupDriver::Systemd => &["create", "start", "delete"],
        _ => &["create", "start"],
    };
    assert_eq!(of_c, want, "runc calls of {c}");
    assert_eq!(of_pod, want, "runc calls of the sandbox");
    drop(wrapper);
    cd.assert_no_leaks();
    cd.finish();
}

/// Where a signal through the pidfd would do less than runc: a shared pid
/// namespace (runc kills every process of the cgroup on SIGKILL) and a
/// paused container (runc thaws it). Both go to runc, and both end the
/// container.
#[test]
fn shared_pid_and_paused_kills_go_to_runc() {
    let Some(cd) = common::start_with(BRISK_HANDLER, common::wrapper_options()) else {
        return;
    };
    let wrapper = RuncWrapper::install(&cd.dir).expect("runc wrapper");
    let cri = cd.cri();

    let config = cri.shared_pid_pod_config("pidfdshared");
    let shared = cri
        .run_pod_sandbox_with(BRISK_HANDLER, config)
        .expect("shared-pid pod");
    let s = cri
        .run_container(
            &shared,
            &ContainerSpec::new("s", &["sleep", "1000"]).share_pod_pid(),
        )
        .expect("s");
    cri.stop_container(&s, 0).expect("StopContainer s");
    let st = cri
        .wait_for_exited(&s, Duration::from_secs(30))
        .expect("s exited");
    assert_eq!(st.exit_code, 137);
    assert!(
        wrapper.calls_of(&s).iter().any(|sub| sub == "kill"),
        "no runc kill of {s} in a shared-pid pod: {:?}",
        wrapper.calls_of(&s)
    );

    let pod = cri
        .run_pod_sandbox(BRISK_HANDLER, "pidfdpaused")
        .expect("pod");
    let p = cri
        .run_container(&pod, &ContainerSpec::new("p", &["sleep", "1000"]))
        .expect("p");
    let shim = Shim::of_cri_container(&cd, &p).expect("connect to the pod's shim");
    shim.pause(&p).expect("Pause");
    shim.kill(&p, "", libc::SIGKILL as u32)
        .expect("Kill of a paused container");
    drop(shim);
    let st = cri
        .wait_for_exited(&p, Duration::from_secs(30))
        .unwrap_or_else(|e| {
            panic!(
                "paused p never exited after Kill: {e:#}\n{}",
                cd.log_tail(30)
            )
        });
    assert_eq!(st.exit_code, 137);
    assert!(
        wrapper.calls_of(&p).iter().any(|sub| sub == "kill"),
        "no runc kill of the paused {p}: {:?}",
        wrapper.calls_of(&p)
    );

    for pod in [&shared, &pod] {
        cri.stop_pod(&pod.id).expect("StopPodSandbox");
        cri.remove_pod(&pod.id).expect("RemovePodSandbox");
    }
    drop(wrapper);
    cd.assert_no_leaks();
    cd.finish();
}
