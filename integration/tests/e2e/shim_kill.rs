//! SIGKILL of a pod's shim: CRI can still stop and remove the pod, and the
//! shim's `delete` leaves no mounts, sockets, cgroups or runc state behind.

use std::time::{Duration, Instant};

use brisk_integration::containerd::RUNC_STATE_ROOTS;
use brisk_integration::cri::ContainerState;
use brisk_integration::fault::RuncWrapper;
use brisk_integration::scenario::Strace;
use brisk_integration::{sys, ContainerSpec, LinuxContainerResources, BRISK_HANDLER, RUNC_HANDLER};
use containerd_shim_protos::api::Status;

use crate::common::{self, exit_on_go, go};
use crate::direct::{status_of, Shim};

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

/// A killed process releases its files one after the other, its last
/// opened first: the shim's connections to containerd close (and
/// containerd runs `containerd-shim-brisk-v2 delete` for each task) while
/// its listening socket, opened first, still accepts connections for a
/// moment, longer on a loaded node. The cleanup must not take a socket
/// that accepts but never answers for a live shim: that left the killed
/// pod's container running, with its cgroups and runc state (CI's run of
/// `shim_sigkill_brisk`, and a chaos run). Here a copy of the listener,
/// held by the test for a second after the kill, makes that moment last
/// while containerd's cleanups look at the socket.
#[test]
fn dead_shim_cleanup_while_its_listener_still_accepts_leaves_nothing() {
    let Some(cd) = common::start(BRISK_HANDLER) else {
        return;
    };
    let cri = cd.cri();
    let pod = cri
        .run_pod_sandbox(BRISK_HANDLER, "heldlistener")
        .expect("pod");
    let id = cri
        .run_container(&pod, &ContainerSpec::new("victim", &["sleep", "1000"]))
        .expect("container");
    let shims = common::handler_shims(&cd, BRISK_HANDLER);
    assert_eq!(shims.len(), 1, "one shim: {shims:?}");
    cd.refresh_sockets();
    // fd 3 is where `start` hands the shim its listening socket.
    let listener = sys::copy_fd_of(shims[0], 3).expect("copy of the shim's listener");
    assert!(
        accepts_connections(&listener),
        "fd 3 of the shim is its listener"
    );
    sys::kill(shims[0], libc::SIGKILL);
    assert!(sys::wait_gone(&shims, Duration::from_secs(10)));
    std::thread::sleep(Duration::from_secs(1));
    drop(listener);

    let st = cri
        .wait_for_exited(&id, Duration::from_secs(60))
        .expect("container exited after shim death");
    assert_ne!(st.exit_code, 0, "exit code after shim death: {st:?}");
    cri.stop_pod(&pod.id)
        .expect("StopPodSandbox after shim death");
    cri.remove_pod(&pod.id)
        .expect("RemovePodSandbox after shim death");
    cd.assert_no_leaks();
    cd.finish();
}

fn accepts_connections(fd: &std::os::fd::OwnedFd) -> bool {
    use std::os::fd::AsRawFd;
    let mut on: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes an int and its length into the given places.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            (&mut on as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    r == 0 && on == 1
}

/// The stock shim leaves its dead socket in /run/containerd/s (see
/// shared/ENVIRONMENT.md); run with `--ignored` to see it.
#[test]
#[ignore]
fn shim_sigkill_runc() {
    shim_killed(RUNC_HANDLER);
}

/// SIGKILL of the shim while its pod has a running container and an
/// exiting one (its init exited; CRI's Delete of it is stuck in a slow
/// `runc delete`). containerd's cleanup (`containerd-shim-brisk-v2 delete`)
/// leaves no runc state, mount, socket or cgroup; both containers show
/// EXITED; a new pod on the same containerd works.
#[test]
fn shim_sigkill_with_exiting_container_brisk() {
    // The exiting container's delete is the runtime's (held below), not
    // the shim's own teardown.
    let Some(cd) = common::start_with(BRISK_HANDLER, common::wrapper_options_deleting_by_runtime())
    else {
        return;
    };
    let wrapper = RuncWrapper::install(&cd.dir).expect("runc wrapper");
    let cri = cd.cri();
    let pod = cri
        .run_pod_sandbox(BRISK_HANDLER, "shimkill2")
        .expect("pod");
    let running = cri
        .run_container(&pod, &ContainerSpec::new("running", &["sleep", "1000"]))
        .expect("running");
    let exiting = cri
        .run_container(&pod, &ContainerSpec::sh("exiting", &exit_on_go(4)))
        .expect("exiting");
    wrapper.hang("delete", &[&exiting]).unwrap();
    go(&cd, &exiting);
    wrapper
        .wait_hung("delete", &exiting, Duration::from_secs(15))
        .expect("CRI deletes the exited container");
    // The shim has it exiting: stopped, with its code.
    let st = Shim::of_cri_container(&cd, &exiting)
        .expect("connect")
        .state(&exiting, "")
        .expect("State");
    assert_eq!((status_of(&st), st.exit_status), (Status::STOPPED, 4));

    cd.refresh_sockets();
    let sockets = cd.known_sockets();
    assert!(!sockets.is_empty(), "shim socket seen");
    let shims = common::handler_shims(&cd, BRISK_HANDLER);
    assert_eq!(shims.len(), 1, "one shim: {shims:?}");
    sys::kill(shims[0], libc::SIGKILL);
    assert!(sys::wait_gone(&shims, Duration::from_secs(10)));
    // The hung `runc delete` (now an orphan) may go on; cleanup must not hang.
    wrapper.release("delete");

    for (id, what) in [(&running, "running"), (&exiting, "exiting")] {
        let st = cri
            .wait_for_exited(id, Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("{what}: {e:#}\n{}", cd.log_tail(40)));
        eprintln!(
            "{what}: EXITED, exit code {}, reason {:?}",
            st.exit_code, st.reason
        );
        assert_ne!(st.exit_code, 0, "{what}: {st:?}");
    }
    // What containerd's cleanup of the dead shim must have removed.
    let ids = [pod.id.as_str(), running.as_str(), exiting.as_str()];
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let leftovers = loop {
        let mut left = Vec::new();
        for id in ids {
            for r in RUNC_STATE_ROOTS {
                let p = std::path::Path::new(r).join("k8s.io").join(id);
                if p.exists() {
                    left.push(format!("runc state {}", p.display()));
                }
            }
            let rootfs = cd
                .dir
                .join("state/io.containerd.runtime.v2.task/k8s.io")
                .join(id)
                .join("rootfs");
            if sys::mounts().iter().any(|m| m.mount_point == rootfs) {
                left.push(format!("mount {}", rootfs.display()));
            }
            if id != pod.id {
                for d in cd.container_cgroup_dirs(id) {
                    left.push(format!("cgroup {}", d.display()));
                }
            }
        }
        for s in &sockets {
            if s.exists() {
                left.push(format!("socket {}", s.display()));
            }
        }
        if left.is_empty() || std::time::Instant::now() > deadline {
            break left;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        leftovers.is_empty(),
        "left after the dead shim's cleanup: {leftovers:?}\n{}",
        cd.log_tail(60)
    );
    assert_ne!(
        cri.pod_status(&pod.id).expect("pod status").state,
        brisk_integration::cri::PodSandboxState::SandboxReady as i32,
        "the pod's sandbox died with its shim"
    );

    // The containerd still runs new brisk pods.
    let pod2 = cri
        .run_pod_sandbox(BRISK_HANDLER, "after")
        .expect("new pod");
    let c2 = cri
        .run_container(&pod2, &ContainerSpec::new("c", &["sleep", "1000"]))
        .expect("container in the new pod");
    let r = cri
        .exec_sync(&c2, &["echo", "fine"], Duration::from_secs(10))
        .expect("ExecSync in the new pod");
    assert_eq!(r.stdout_str(), "fine\n");
    assert_eq!(
        cri.container_status(&c2).expect("status").state,
        ContainerState::ContainerRunning as i32
    );
    for p in [&pod.id, &pod2.id] {
        cri.stop_pod(p).expect("StopPodSandbox");
        cri.remove_pod(p).expect("RemovePodSandbox");
    }
    cd.assert_no_leaks();
    cd.finish();
}

/// A dead shim's cleanup whose `runc delete` fails says so where
/// operators look (containerd puts the `delete` command's warnings in its
/// own log), and removes the container by hand: nobody runs the cleanup
/// again while containerd runs.
#[test]
fn dead_shim_cleanup_failure_reaches_containerds_log() {
    let Some(cd) = common::start_with(BRISK_HANDLER, common::wrapper_options()) else {
        return;
    };
    let wrapper = RuncWrapper::install(&cd.dir).expect("runc wrapper");
    let cri = cd.cri();
    let pod = cri
        .run_pod_sandbox(BRISK_HANDLER, "shimkill3")
        .expect("pod");
    let victim = cri
        .run_container(&pod, &ContainerSpec::new("victim", &["sleep", "1000"]))
        .expect("victim");
    wrapper.fail("delete", &[&victim]).unwrap();
    let shims = common::handler_shims(&cd, BRISK_HANDLER);
    assert_eq!(shims.len(), 1, "one shim: {shims:?}");
    sys::kill(shims[0], libc::SIGKILL);
    assert!(sys::wait_gone(&shims, Duration::from_secs(10)));
    cri.wait_for_exited(&victim, Duration::from_secs(60))
        .expect("victim exited after shim death");
    let said = |l: &str| l.contains("runc delete --force failed") && l.contains(&victim);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let line = loop {
        let log = std::fs::read_to_string(&cd.log_path).unwrap_or_default();
        if let Some(l) = log.lines().find(|l| said(l)) {
            break l.to_string();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no warning naming {victim} in containerd's log:\n{}",
            cd.log_tail(40)
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!("containerd logged: {line}");
    let state = std::path::Path::new(RUNC_STATE_ROOTS[1])
        .join("k8s.io")
        .join(&victim);
    assert!(
        !state.exists(),
        "{} left\n{}",
        state.display(),
        cd.log_tail(30)
    );
    let cgroups = cd.container_cgroup_dirs(&victim);
    assert!(cgroups.is_empty(), "cgroups left: {cgroups:?}");
    wrapper.unfail("delete");
    cri.stop_pod(&pod.id).expect("StopPodSandbox");
    cri.remove_pod(&pod.id).expect("RemovePodSandbox");
    cd.assert_no_leaks();
    cd.finish();
}

/// SIGKILL of a shim while a container's rootfs unmount is stuck in the
/// kernel (strace holds its umount2, as a sync under I/O pressure holds
/// it). A process exits only when its last thread does, so an unmount on a
/// shim thread would keep the dead shim's sockets open until it ended:
/// containerd would not learn of the death, and an Update of the pod's
/// other container would wait on the dead shim under CRI's status lock,
/// stalling ListContainers. The sockets must close at once.
#[test]
fn shim_killed_during_a_stuck_unmount_lets_go_at_once_brisk() {
    const HELD: Duration = Duration::from_secs(30);
    let Some(cd) = common::start(BRISK_HANDLER) else {
        return;
    };
    let cri = cd.cri();
    let pod = cri
        .run_pod_sandbox(BRISK_HANDLER, "shimkill4")
        .expect("pod");
    let other = cri
        .run_container(&pod, &ContainerSpec::new("other", &["sleep", "1000"]))
        .expect("other");
    let exiting = cri
        .run_container(&pod, &ContainerSpec::sh("exiting", &exit_on_go(3)))
        .expect("exiting");
    let shims = common::handler_shims(&cd, BRISK_HANDLER);
    assert_eq!(shims.len(), 1, "one shim: {shims:?}");
    let shim = shims[0];
    let mut strace =
        Strace::attach_shim_only(shim, &cd.dir.join("strace.txt"), Some(HELD)).expect("strace");
    go(&cd, &exiting);
    cri.wait_for_exited(&exiting, common::EXIT_TIMEOUT)
        .expect("exiting exited");
    // CRI deletes the task at its exit; its unmount is then held.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !sys::umount2_held_under(shim) {
        assert!(
            Instant::now() < deadline,
            "the unmount of {exiting} never reached umount2\n{}",
            cd.log_tail(30)
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    sys::kill(shim, libc::SIGKILL);
    let killed = Instant::now();
    let update = cri.update_container_resources(
        &other,
        LinuxContainerResources {
            cpu_shares: 512,
            ..Default::default()
        },
    );
    let took = killed.elapsed();
    eprintln!("Update of the other container after the kill: {update:?} in {took:?}");
    assert!(
        took < Duration::from_secs(5),
        "an Update waited {took:?} on a killed shim (its unmount held for {HELD:?})\n{}",
        cd.log_tail(30)
    );

    // The held unmount still ends once strace lets go; nothing is left.
    strace.detach();
    let rootfs = common::rootfs_of(&cd, &exiting);
    let deadline = Instant::now() + Duration::from_secs(20);
    while sys::mounts().iter().any(|m| m.mount_point == rootfs) {
        assert!(
            Instant::now() < deadline,
            "{} still mounted",
            rootfs.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for id in [&other, &exiting] {
        cri.wait_for_exited(id, Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("{id}: {e:#}\n{}", cd.log_tail(40)));
    }
    cri.stop_pod(&pod.id).expect("StopPodSandbox");
    cri.remove_pod(&pod.id).expect("RemovePodSandbox");
    cd.assert_no_leaks();
    cd.finish();
}

/// SIGKILL of a pod's shim while `runc delete` hangs past the shim's runc
/// timeout (the chaos soak's hung runc meeting its shim kill). containerd
/// gives the dead shim's cleanup (`containerd-shim-brisk-v2 delete`) 5 s
/// before it kills it, and nobody runs it again while containerd runs: a
/// cleanup that waits on the hung runc is killed with the container's
/// runc state, cgroups, rootfs mount and bundle still there. It must end
/// within containerd's bound and leave nothing, the hung runc
/// notwithstanding.
#[test]
fn dead_shim_cleanup_with_runc_delete_hung_leaves_nothing() {
    const HUNG: Duration = Duration::from_secs(8);
    let mut options = common::wrapper_options();
    if let Some(toml) = options.brisk_config_toml.as_mut() {
        toml.push_str("runc_timeout_secs = 3\n");
    }
    let Some(cd) = common::start_with(BRISK_HANDLER, options) else {
        return;
    };
    let wrapper = RuncWrapper::install(&cd.dir).expect("runc wrapper");
    let cri = cd.cri();
    let pod = cri
        .run_pod_sandbox(BRISK_HANDLER, "shimkill5")
        .expect("pod");
    let victim = cri
        .run_container(&pod, &ContainerSpec::new("victim", &["sleep", "1000"]))
        .expect("victim");
    wrapper.hang("delete", &[&victim]).unwrap();
    let shims = common::handler_shims(&cd, BRISK_HANDLER);
    assert_eq!(shims.len(), 1, "one shim: {shims:?}");
    sys::kill(shims[0], libc::SIGKILL);
    let killed = Instant::now();
    assert!(sys::wait_gone(&shims, Duration::from_secs(10)));
    cri.wait_for_exited(&victim, Duration::from_secs(60))
        .expect("victim exited after shim death");
    std::thread::sleep(HUNG.saturating_sub(killed.elapsed()));
    // The hung runc goes on now, to find nothing left or to finish.
    wrapper.release("delete");
    let log = std::fs::read_to_string(&cd.log_path).unwrap_or_default();
    let killed_cleanups: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("failed to delete dead shim") && l.contains(&victim))
        .collect();
    assert!(
        killed_cleanups.is_empty(),
        "containerd killed the dead shim's cleanup of {victim}: {killed_cleanups:?}"
    );
    cri.stop_pod(&pod.id).expect("StopPodSandbox");
    cri.remove_pod(&pod.id).expect("RemovePodSandbox");
    cd.assert_no_leaks();
    cd.finish();
}
