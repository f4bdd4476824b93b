//! The post-mortem's reproduction, as a regression test: a container exits
//! while its shim's umount2 is delayed by strace, and a kubelet-like loop
//! calls UpdateContainerResources every second and ListContainers back to
//! back. With the stock shim ListContainers stalls behind the unmount; with
//! brisk nothing a kubelet calls may wait on it.

use std::{
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use brisk_integration::{ContainerSpec, LinuxContainerResources, BRISK_HANDLER, RUNC_HANDLER};

use crate::common;

/// Injected delay of every umount2 the shim makes, in microseconds.
const UMOUNT_DELAY_US: u64 = 10_000_000;

#[derive(Debug)]
struct Outcome {
    list_max: Duration,
    #[allow(dead_code)] // shown through Debug
    list_calls: usize,
    update_calls: usize,
    update_failures: Vec<String>,
    /// From the container's exit (CRI finished_at) to EXITED seen in CRI.
    exited_after: Duration,
    exit_code: i32,
}

/// Attaches strace to `pid` and delays its (and its children's) umount2.
fn delay_umount(pid: i32) -> Child {
    let child = Command::new("strace")
        .args(["-f", "-qq", "-o", "/dev/null", "-e", "trace=umount2"])
        .arg("-e")
        .arg(format!("inject=umount2:delay_enter={UMOUNT_DELAY_US}"))
        .arg("-p")
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .spawn()
        .expect("strace (apt-get install strace)");
    // strace needs a moment to attach to every thread.
    std::thread::sleep(Duration::from_millis(1500));
    child
}

fn detach(mut strace: Child) {
    // SIGINT makes strace detach cleanly, leaving the tracee running.
    let _ = Command::new("kill")
        .args(["-INT", &strace.id().to_string()])
        .status();
    let _ = strace.wait();
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

fn run_scenario(handler: &str) -> Option<Outcome> {
    let cd = common::start(handler)?;
    let cri = cd.cri();
    let pod = cri
        .run_pod_sandbox(handler, &format!("exiting-{handler}"))
        .expect("RunPodSandbox");
    let c = cri
        .run_container(&pod, &ContainerSpec::sh("short", "sleep 4; exit 5"))
        .expect("short-lived container");
    let shim = *common::handler_shims(&cd, handler)
        .first()
        .expect("a shim for the pod");
    let strace = delay_umount(shim);

    let exited = AtomicBool::new(false);
    let stop = AtomicBool::new(false);
    let outcome = std::thread::scope(|s| {
        let lister = s.spawn(|| {
            let (mut max, mut calls) = (Duration::ZERO, 0);
            while !stop.load(Ordering::SeqCst) {
                let t = Instant::now();
                let _ = cri.list_containers(None);
                max = max.max(t.elapsed());
                calls += 1;
            }
            (max, calls)
        });
        let updater = s.spawn(|| {
            let (mut calls, mut failures) = (0, Vec::new());
            // A kubelet stops updating a container once it has exited.
            while !stop.load(Ordering::SeqCst) && !exited.load(Ordering::SeqCst) {
                let r = LinuxContainerResources {
                    cpu_shares: 512 + (calls % 2) as i64,
                    ..Default::default()
                };
                let t = Instant::now();
                if let Err(e) = cri.update_container_resources(&c, r) {
                    failures.push(format!("{e:#}"));
                }
                calls += 1;
                std::thread::sleep(Duration::from_secs(1).saturating_sub(t.elapsed()));
            }
            (calls, failures)
        });

        let status = cri
            .wait_for_exited(&c, Duration::from_secs(180))
            .expect("container EXITED");
        let seen = now_ns();
        exited.store(true, Ordering::SeqCst);
        // Keep listing through the rest of the delayed unmounts.
        std::thread::sleep(Duration::from_millis(2 * UMOUNT_DELAY_US / 1000 + 2000));
        stop.store(true, Ordering::SeqCst);
        let (list_max, list_calls) = lister.join().unwrap();
        let (update_calls, update_failures) = updater.join().unwrap();
        Outcome {
            list_max,
            list_calls,
            update_calls,
            update_failures,
            exited_after: Duration::from_nanos((seen - status.finished_at).max(0) as u64),
            exit_code: status.exit_code,
        }
    });
    detach(strace);
    eprintln!("{handler}: {outcome:?}");

    cri.remove_container(&c).expect("RemoveContainer");
    cri.stop_pod(&pod.id).expect("StopPodSandbox");
    cri.remove_pod(&pod.id).expect("RemovePodSandbox");
    // No mount may be left once the delays have passed.
    cd.wait_no_leaks(Duration::from_secs(60))
        .expect("no leaks after the delayed unmounts");
    cd.finish();
    Some(outcome)
}

#[test]
fn exiting_container_does_not_stall_cri() {
    // Stock first: proves the scenario reproduces the harm this test is
    // about. Up to containerd 2.2, CRI's Update holds the container's status
    // lock while it waits for the shim, and ListContainers stalls behind it.
    // From 2.3 CRI gives up on the shim's task after its deadline instead:
    // ListContainers goes on, but the Updates fail (DeadlineExceeded, an
    // error kubelet reports) and EXITED waits for the unmount.
    let Some(stock) = run_scenario(RUNC_HANDLER) else {
        return;
    };
    let stalled_list = stock.list_max >= Duration::from_secs(10);
    let failed_updates =
        !stock.update_failures.is_empty() && stock.exited_after >= Duration::from_secs(10);
    assert!(
        stalled_list || failed_updates,
        "the stock shim should stall ListContainers, or fail Updates and delay EXITED, \
         behind the delayed unmount: {stock:?}"
    );

    let brisk = run_scenario(BRISK_HANDLER).expect("brisk run");
    assert_eq!(brisk.exit_code, 5, "{brisk:?}");
    assert!(
        brisk.list_max < Duration::from_millis(500),
        "ListContainers stalled: {brisk:?}"
    );
    assert!(
        brisk.update_failures.is_empty(),
        "UpdateContainerResources failed: {brisk:?}"
    );
    assert!(brisk.update_calls >= 3, "the update loop ran: {brisk:?}");
    assert!(
        brisk.exited_after < Duration::from_secs(2),
        "EXITED must show within 2s of the exit: {brisk:?}"
    );
    eprintln!(
        "ListContainers max: stock {:?}, brisk {:?}; exit -> EXITED: stock {:?}, brisk {:?}",
        stock.list_max, brisk.list_max, stock.exited_after, brisk.exited_after
    );
}
