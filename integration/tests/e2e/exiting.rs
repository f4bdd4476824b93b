//! The post-mortem's reproduction, as a regression test: a container exits
//! while its shim's umount2 is delayed by strace, and a kubelet-like loop
//! calls UpdateContainerResources every second and ListContainers back to
//! back. With the stock shim CRI stalls behind the unmount; with brisk
//! nothing a kubelet calls may wait on it.
//!
//! How the stock shim's stall shows depends on the containerd release. Up to
//! 2.2, a task State that times out (2 s) is answered with an UNKNOWN
//! status, so CRI's UpdateContainerResources goes on to the shim's Update,
//! which waits for the unmount while CRI holds the container's status lock:
//! ListContainers stalls for the whole delay. From 2.3 on, that State
//! timeout fails the Update at once (plugins/services/tasks `getProcessState`
//! returns DeadlineExceeded), so ListContainers waits at most ~2 s, and the
//! stall shows as Updates failing with DeadlineExceeded and EXITED late.
//!
//! The bounds on brisk are relative to what one runc call costs on the
//! machine, measured in the same run before the exit: strace stops the shim
//! and its runc children at every system call, which costs little on a host
//! and seconds per runc call in a TCG guest, for either shim. Before the
//! exit both shims do the same work (an Update is one `runc update` while
//! CRI holds the status lock), so that is the baseline; what the exit adds
//! on top must not be the umount.

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
    /// The slowest UpdateContainerResources that ended before the exit,
    /// and how many did: the machine's cost of one traced runc call.
    update_before_exit: (Duration, usize),
    #[allow(dead_code)] // shown through Debug
    list_calls: usize,
    update_calls: usize,
    update_failures: Vec<String>,
    /// From the container's exit (CRI finished_at) to EXITED seen in CRI.
    exited_after: Duration,
    exit_code: i32,
    /// The containerd release that ran the scenario.
    containerd: (u32, u32, u32),
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
        .run_container(&pod, &ContainerSpec::sh("short", "sleep 8; exit 5"))
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
            let (mut calls, mut failures, mut timed) = (0, Vec::new(), Vec::new());
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
                timed.push((now_ns(), t.elapsed()));
                calls += 1;
                std::thread::sleep(Duration::from_secs(1).saturating_sub(t.elapsed()));
            }
            (calls, failures, timed)
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
        let (update_calls, update_failures, timed) = updater.join().unwrap();
        let before: Vec<Duration> = timed
            .iter()
            .filter(|(ended, _)| *ended < status.finished_at)
            .map(|(_, took)| *took)
            .collect();
        Outcome {
            list_max,
            update_before_exit: (
                before.iter().copied().max().unwrap_or_default(),
                before.len(),
            ),
            list_calls,
            update_calls,
            update_failures,
            exited_after: Duration::from_nanos((seen - status.finished_at).max(0) as u64),
            exit_code: status.exit_code,
            containerd: cd.containerd_version,
        }
    });
    detach(strace);
    eprintln!("{handler}: {outcome:?}");
    // What the shim and CRI said about the container's exit, with their
    // timings: where the time went when a bound is missed.
    let log = std::fs::read_to_string(&cd.log_path).unwrap_or_default();
    for line in log.lines().filter(|l| {
        l.contains(&c[..12])
            && ["took=", "exited", "TaskExit", "delet"]
                .iter()
                .any(|k| l.contains(k))
    }) {
        eprintln!("  {line}");
    }

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
    // about, in the form the release shows it (see the module doc).
    let Some(stock) = run_scenario(RUNC_HANDLER) else {
        return;
    };
    if stock.containerd < (2, 3, 0) {
        assert!(
            stock.list_max >= Duration::from_secs(10),
            "the stock shim should stall ListContainers behind the delayed unmount: {stock:?}"
        );
    } else {
        assert!(
            stock
                .update_failures
                .iter()
                .any(|f| f.contains("DeadlineExceeded")),
            "the stock shim should time out UpdateContainerResources behind the delayed unmount: {stock:?}"
        );
        assert!(
            stock.exited_after >= Duration::from_secs(10),
            "the stock shim should delay EXITED behind the delayed unmount: {stock:?}"
        );
    }

    let brisk = run_scenario(BRISK_HANDLER).expect("brisk run");
    assert_eq!(brisk.exit_code, 5, "{brisk:?}");
    let (runc_call, measured) = brisk.update_before_exit;
    assert!(
        measured >= 2,
        "too few Updates before the exit for a baseline: {brisk:?}"
    );
    // ListContainers may wait for one Update in flight (CRI's status lock),
    // never for the umount.
    let list_bound = Duration::from_millis(500) + runc_call;
    // EXITED waits for the TaskExit, CRI's Delete (one `runc delete`, the
    // early one brisk started at the exit) and CRI's next look.
    let exited_bound = Duration::from_secs(2) + 2 * runc_call;
    let umount = Duration::from_micros(UMOUNT_DELAY_US);
    assert!(
        exited_bound < umount && list_bound < umount,
        "this machine is too slow for the scenario to tell a wait on the umount \
         (one traced runc call takes {runc_call:?}): {brisk:?}"
    );
    assert!(
        brisk.list_max < list_bound,
        "ListContainers stalled (bound {list_bound:?}): {brisk:?}"
    );
    assert!(
        brisk.update_failures.is_empty(),
        "UpdateContainerResources failed: {brisk:?}"
    );
    assert!(brisk.update_calls >= 3, "the update loop ran: {brisk:?}");
    assert!(
        brisk.exited_after < exited_bound,
        "EXITED must show within {exited_bound:?} of the exit: {brisk:?}"
    );
    eprintln!(
        "ListContainers max: stock {:?}, brisk {:?} (bound {list_bound:?}); \
         exit -> EXITED: stock {:?}, brisk {:?} (bound {exited_bound:?})",
        stock.list_max, brisk.list_max, stock.exited_after, brisk.exited_after
    );
}
