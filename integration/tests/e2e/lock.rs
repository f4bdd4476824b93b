//! Lock discipline: runc hangs in `update`, `ps` and `delete` of one
//! container (a runc wrapper waits ~20 s), and meanwhile State, Wait, Kill
//! and the rest on that container, and every call on the pod's other
//! containers, still answer at once. The container's `runc delete` waits
//! for its hung `update` and `ps` (never beside them).
//!
//! Shim calls are timed on a ttrpc connection to the pod's shim (no process
//! start-up in the measurement); CRI calls through containerd.

use std::time::{Duration, Instant};

use brisk_integration::cri::ContainerState;
use brisk_integration::fault::RuncWrapper;
use brisk_integration::{ContainerSpec, Containerd, LinuxContainerResources, Pod, BRISK_HANDLER};
use containerd_shim_protos::api::Status;
use containerd_shim_protos::ttrpc::Code;

use crate::common;
use crate::direct::{status_of, CallResult, Shim};

/// Calls that need no runc must answer within this.
const QUICK: Duration = Duration::from_millis(100);

/// Measured latencies, checked together so a failure shows all of them.
#[derive(Default)]
struct Timings(Vec<(String, Duration, Duration)>);

impl Timings {
    fn time<T>(&mut self, what: &str, limit: Duration, f: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        let r = f();
        self.0.push((what.to_string(), t.elapsed(), limit));
        r
    }

    fn check(&self) {
        let mut table = String::new();
        for (what, took, limit) in &self.0 {
            let flag = if took > limit { "  <-- TOO SLOW" } else { "" };
            table.push_str(&format!(
                "  {what:<52} {took:>12.1?} (limit {limit:?}){flag}\n"
            ));
        }
        eprintln!("latencies:\n{table}");
        assert!(
            self.0.iter().all(|(_, took, limit)| took <= limit),
            "calls too slow while runc hangs:\n{table}"
        );
    }
}

/// Slowest of three runs of `f`.
fn baseline<T>(mut f: impl FnMut() -> T) -> Duration {
    (0..3)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .max()
        .unwrap()
}

fn ok<T: std::fmt::Debug>(what: &str, r: CallResult<T>) -> T {
    r.unwrap_or_else(|e| panic!("{what}: {e}"))
}

const CPU: &[u8] = br#"{"cpu":{"shares":512}}"#;

#[test]
fn hung_runc_blocks_no_other_call() {
    // The exited container's delete is the runtime's (held below), not the
    // shim's own teardown.
    let Some(cd) = common::start_with(BRISK_HANDLER, common::wrapper_options_deleting_by_runtime())
    else {
        return;
    };
    let wrapper = RuncWrapper::install(&cd.dir).expect("runc wrapper");
    let cri = cd.cri();
    let pod = cri.run_pod_sandbox(BRISK_HANDLER, "lock").expect("pod");
    let a = cri
        .run_container(&pod, &ContainerSpec::new("a", &["sleep", "1000"]))
        .expect("a");
    let b = cri
        .run_container(&pod, &ContainerSpec::new("b", &["sleep", "1000"]))
        .expect("b");
    let shim = Shim::of_cri_container(&cd, &a).expect("connect to the pod's shim");
    let out_dir = cd.dir.clone();
    // Pids of an exited, undeleted task: its init alone (see the shim's Pids).
    let a_init = vec![ok("State a", shim.state(&a, "")).pid];

    // What runc-backed calls on b cost when nothing hangs.
    let mut n = 0;
    let base_pids = baseline(|| ok("pids b", shim.pids(&b)));
    let base_update = baseline(|| ok("update b", shim.update(&b, CPU)));
    let base_kill = baseline(|| ok("kill b", shim.kill(&b, "", libc::SIGCONT as u32)));
    let base_exec = baseline(|| {
        n += 1;
        ok(
            "exec b",
            shim.exec_sync(&b, &format!("base{n}"), &["true"], &out_dir),
        )
    });
    let base_cri_exec = baseline(|| {
        cri.exec_sync(&b, &["true"], Duration::from_secs(10))
            .expect("ExecSync b")
    });
    let slack = |base: Duration| QUICK + base;
    eprintln!(
        "baselines: pids {base_pids:?} update {base_update:?} kill {base_kill:?} exec {base_exec:?} CRI exec {base_cri_exec:?}"
    );

    for sub in ["update", "ps", "delete"] {
        wrapper.hang(sub, &[&a]).unwrap();
    }
    let mut t = Timings::default();
    std::thread::scope(|s| {
        let hung_update = s.spawn(|| shim.update(&a, CPU));
        let hung_pids = s.spawn(|| shim.pids(&a));
        wrapper
            .wait_hung("update", &a, Duration::from_secs(10))
            .unwrap();
        wrapper
            .wait_hung("ps", &a, Duration::from_secs(10))
            .unwrap();

        // --- runc update and ps of a hang; a runs.
        let calls_on_b = |t: &mut Timings, phase: &str, n: &mut i32| {
            let st = t.time(&format!("{phase}: State b"), QUICK, || shim.state(&b, ""));
            assert_eq!(status_of(&ok("State b", st)), Status::RUNNING);
            t.time(&format!("{phase}: Stats b"), QUICK, || {
                ok("Stats b", shim.stats(&b))
            });
            t.time(&format!("{phase}: Pids b"), slack(base_pids), || {
                ok("Pids b", shim.pids(&b))
            });
            t.time(&format!("{phase}: Update b"), slack(base_update), || {
                ok("Update b", shim.update(&b, CPU))
            });
            t.time(
                &format!("{phase}: Kill b (SIGCONT)"),
                slack(base_kill),
                || ok("Kill b", shim.kill(&b, "", libc::SIGCONT as u32)),
            );
            *n += 1;
            // An identifier, as containerd requires of exec ids.
            let exec_id = format!("{phase}{n}").replace([' ', '+'], "-");
            t.time(
                &format!("{phase}: Exec+Start+Wait+Delete b"),
                slack(base_exec),
                || ok("exec b", shim.exec_sync(&b, &exec_id, &["true"], &out_dir)),
            );
            let st = t.time(&format!("{phase}: CRI ContainerStatus b"), QUICK, || {
                cri.container_status(&b).expect("ContainerStatus b")
            });
            assert_eq!(st.state, ContainerState::ContainerRunning as i32);
            t.time(&format!("{phase}: CRI ListContainers"), QUICK, || {
                cri.list_containers(None).expect("ListContainers")
            });
            t.time(
                &format!("{phase}: CRI ExecSync b"),
                slack(base_cri_exec),
                || {
                    cri.exec_sync(&b, &["true"], Duration::from_secs(10))
                        .expect("ExecSync b")
                },
            );
        };
        let st = t.time("update+ps hung: State a", QUICK, || shim.state(&a, ""));
        assert_eq!(status_of(&ok("State a", st)), Status::RUNNING);
        t.time("update+ps hung: Stats a", QUICK, || {
            ok("Stats a", shim.stats(&a))
        });
        let st = t.time("update+ps hung: CRI ContainerStatus a", QUICK, || {
            cri.container_status(&a).expect("ContainerStatus a")
        });
        assert_eq!(st.state, ContainerState::ContainerRunning as i32);
        calls_on_b(&mut t, "update+ps hung", &mut n);

        // Kill a while its update and ps hang; Wait sees the exit at once.
        let waiter = s.spawn(|| {
            let r = shim.wait(&a, "", Duration::from_secs(60));
            (Instant::now(), r)
        });
        std::thread::sleep(Duration::from_millis(100));
        t.time("update+ps hung: Kill a (SIGKILL)", slack(base_kill), || {
            ok("Kill a", shim.kill(&a, "", 9))
        });
        let killed = Instant::now();
        let (woke, w) = waiter.join().unwrap();
        let w = ok("Wait a", w);
        assert_eq!(w.exit_status, 137);
        t.0.push((
            "update+ps hung: Wait a returns after the kill".into(),
            woke.saturating_duration_since(killed),
            QUICK,
        ));
        // The hung Update and Pids answer at the exit; their runc calls
        // stay hung, detached.
        let u = hung_update.join().unwrap();
        let p = hung_pids.join().unwrap();
        t.0.push((
            "update+ps hung: hung Update and Pids a answer after the kill".into(),
            killed.elapsed(),
            QUICK,
        ));
        let u = u.expect_err("Update of a container that exited meanwhile");
        assert_eq!(u.code, Code::NOT_FOUND, "{u}");
        assert!(u.message.contains("exiting"), "{u}");
        assert_eq!(ok("Pids a", p), a_init);

        // --- runc delete of a (started at the published exit) waits for
        // the runc calls on a still running detached: never beside them.
        std::thread::sleep(Duration::from_secs(1));
        let hung = wrapper.hung();
        assert!(
            !hung.iter().any(|(s, i)| s == "delete" && i == &a),
            "runc delete of a ran beside its hung runc update and ps: {hung:?}"
        );
        wrapper.release("update");
        wrapper.release("ps");
        // --- CRI's exit handling calls Delete a, whose runc delete hangs too.
        wrapper
            .wait_hung("delete", &a, Duration::from_secs(15))
            .expect("CRI's Delete of a reaches runc delete");
        let phase = "update+ps+delete hung";
        let st = t.time(&format!("{phase}: State a"), QUICK, || shim.state(&a, ""));
        let st = ok("State a", st);
        assert_eq!((status_of(&st), st.exit_status), (Status::STOPPED, 137));
        let w = t.time(&format!("{phase}: Wait a"), QUICK, || {
            shim.wait(&a, "", Duration::from_secs(5))
        });
        assert_eq!(ok("Wait a", w).exit_status, 137);
        let k = t.time(&format!("{phase}: Kill a"), QUICK, || shim.kill(&a, "", 9));
        assert_eq!(
            k.map_err(|e| e.code),
            Err(Code::NOT_FOUND),
            "Kill of an exited task"
        );
        let u = t.time(&format!("{phase}: Update a"), QUICK, || {
            shim.update(&a, CPU)
        });
        let u = u.expect_err("Update of an exiting task");
        assert_eq!(u.code, Code::NOT_FOUND, "{u}");
        assert!(u.message.contains("exiting"), "{u}");
        let p = t.time(&format!("{phase}: Pids a"), QUICK, || shim.pids(&a));
        assert_eq!(ok("Pids a", p), a_init);
        t.time(&format!("{phase}: Stats a"), QUICK, || shim.stats(&a))
            .expect_err("Stats of an exiting task");
        t.time(&format!("{phase}: CRI ContainerStatus a"), QUICK, || {
            cri.container_status(&a).expect("ContainerStatus a")
        });
        calls_on_b(&mut t, phase, &mut n);
        let ls = t.time(
            &format!("{phase}: ctr tasks ls (with process start)"),
            Duration::from_secs(1),
            || cd.ctr_in("k8s.io").tasks().expect("ctr tasks ls"),
        );
        assert!(
            ls.iter().any(|(id, st)| id == &a && st == "STOPPED"),
            "{ls:?}"
        );

        // runc delete is still hung: nothing above waited for it.
        let hung = wrapper.hung();
        for sub in ["update", "ps", "delete"] {
            assert!(hung.iter().any(|(s, i)| s == sub && i == &a), "{hung:?}");
        }
        wrapper.clear();
    });
    t.check();

    let st = cri
        .wait_for_exited(&a, Duration::from_secs(60))
        .expect("a EXITED once runc delete is released");
    assert_eq!(st.exit_code, 137);
    drop(shim);
    common::remove_pod_and_finish(cd, &pod);
}

/// A pod on brisk, through the runc wrapper, with a container that stays
/// (`keep`) and one the test makes exit (`c`).
struct Victim {
    cd: Containerd,
    wrapper: RuncWrapper,
    pod: Pod,
    keep: String,
    c: String,
}

impl Victim {
    fn start(pod_name: &str) -> Option<Victim> {
        Victim::start_in(pod_name, false)
    }

    /// With `shared_pid`, the pod's containers share its pid namespace.
    fn start_in(pod_name: &str, shared_pid: bool) -> Option<Victim> {
        let cd = common::start_with(BRISK_HANDLER, common::wrapper_options())?;
        let wrapper = RuncWrapper::install(&cd.dir).expect("runc wrapper");
        let cri = cd.cri();
        let pod = if shared_pid {
            let config = cri.shared_pid_pod_config(pod_name);
            cri.run_pod_sandbox_with(BRISK_HANDLER, config)
        } else {
            cri.run_pod_sandbox(BRISK_HANDLER, pod_name)
        }
        .expect("pod");
        let spec = |name: &str| {
            let s = ContainerSpec::new(name, &["sleep", "1000"]);
            if shared_pid {
                s.share_pod_pid()
            } else {
                s
            }
        };
        let keep = cri.run_container(&pod, &spec("keep")).expect("keep");
        let c = cri.run_container(&pod, &spec("c")).expect("c");
        Some(Victim {
            cd,
            wrapper,
            pod,
            keep,
            c,
        })
    }

    /// Fails the test with `what` and containerd's log when `r` failed.
    fn ensure<T>(&self, what: &str, r: anyhow::Result<T>) -> T {
        r.unwrap_or_else(|e| panic!("{what}: {e:#}\n{}", self.cd.log_tail(30)))
    }

    /// `c` shows EXITED with `code` in CRI, `keep` still answers, and once
    /// the pod is gone nothing is left behind.
    fn finish(self, code: i32) {
        self.wrapper.clear();
        let cri = self.cd.cri();
        let st = cri
            .wait_for_exited(&self.c, Duration::from_secs(30))
            .expect("exited");
        assert_eq!(st.exit_code, code);
        let r = cri
            .exec_sync(&self.keep, &["echo", "ok"], Duration::from_secs(10))
            .expect("ExecSync in the other container");
        assert_eq!(r.stdout_str(), "ok\n");
        drop(self.wrapper);
        common::remove_pod_and_finish(self.cd, &self.pod);
    }
}

/// CRI StopContainer while `runc kill` answers late (its signal lands at
/// once, its exit status 0.5 s later): the container exits, CRI's exit
/// handling deletes it, and the Kill call must still get its answer, so
/// StopContainer succeeds. With the stock shim Delete waits for the Kill.
/// In a shared-pid pod, where the shim leaves the Kill to runc (in a pod of
/// its own it signals the init itself: `kill::`).
#[test]
fn stop_container_while_runc_kill_answers_late() {
    let Some(v) = Victim::start_in("slowkill", true) else {
        return;
    };
    v.wrapper.slow("kill", &[&v.c]).unwrap();
    let r = v.cd.cri().stop_container(&v.c, 0);
    v.ensure("StopContainer with a slow runc kill", r);
    let calls = v.wrapper.calls_of(&v.c);
    assert!(
        calls.iter().any(|sub| sub == "kill"),
        "runc kill of {} never ran: {calls:?}",
        v.c
    );
    v.finish(137);
}

/// CRI UpdateContainerResources while the container exits: runc update is
/// done but answers late, and meanwhile the container is killed from
/// outside (as the OOM killer would). CRI's exit handling deletes the task
/// and containerd then closes the task's connection; the Update must have
/// its answer before that, "exiting" (which CRI takes as success), never
/// "ttrpc: closed" (which CRI reports as an unknown error to kubelet).
#[test]
fn update_in_flight_when_the_container_exits() {
    let Some(v) = Victim::start("updexit") else {
        return;
    };
    let pid = {
        let shim = Shim::of_cri_container(&v.cd, &v.c).expect("connect to the pod's shim");
        ok("State c", shim.state(&v.c, "")).pid as i32
    };
    v.wrapper.slow("update", &[&v.c]).unwrap();
    let r = std::thread::scope(|s| {
        let update = s.spawn(|| {
            let r = LinuxContainerResources {
                cpu_shares: 512,
                ..Default::default()
            };
            v.cd.cri().update_container_resources(&v.c, r)
        });
        v.wrapper
            .wait_slowed("update", &v.c, Duration::from_secs(10))
            .expect("runc update of c ran");
        // SAFETY: kill(2) of the container's init, a pid that stays ours
        // until the shim reaps it after this signal.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
        update.join().unwrap()
    });
    v.ensure("UpdateContainerResources while the container exits", r);
    v.finish(137);
}
