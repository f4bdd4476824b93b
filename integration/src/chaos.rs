//! The chaos soak: the soak's short tasks and kubelet-like loops while a
//! seeded fault driver restarts containerd, SIGKILLs shims, delays unmounts,
//! hangs runc past the shim's timeout, fills containerd's root and lets
//! tasks run out of memory, several at once. At the end every task's CRI
//! status is held against what the task really did, every TaskExit is
//! counted, and nothing may be left on the node.
//!
//! The fault schedule comes from one seed (printed first): the same seed
//! gives the same faults in the same order at the same offsets, so a run
//! that found something can be replayed. The machine's timing still moves
//! where they land in each task's life.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{BufRead, Write},
    path::{Path, PathBuf},
    process::Stdio,
    sync::{
        atomic::{AtomicBool, AtomicI32, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{
    cri::{ContainerSpec, ContainerState, LinuxContainerResources, Pod},
    fault::RuncWrapper,
    scenario::{now_ns, quantile, Strace},
    sys, Containerd, Cri, Options, BRISK_HANDLER,
};

#[derive(Debug, Clone)]
pub struct ChaosParams {
    pub pods: usize,
    pub tasks_per_pod: usize,
    pub handler: String,
    pub seed: u64,
    /// containerd is restarted every `min..max` (SIGKILL one time in three,
    /// SIGTERM otherwise).
    pub restart_every: (Duration, Duration),
    /// One of the other faults (shim kill, hung runc, full root) every
    /// `min..max`.
    pub fault_every: (Duration, Duration),
    /// Shims SIGKILLed at most, over the run.
    pub max_shim_kills: usize,
    /// The shim's `runc_timeout_secs`; hung runc calls hang 1 to 3 s past it.
    pub runc_timeout_secs: u64,
    /// Size of the tmpfs that is containerd's root, filled now and then.
    pub root_mib: u64,
    /// Each task runs `0..task_max`, then exits with a random code.
    pub task_max: Duration,
    /// A delayed shim's umount2 calls are held this long (`min..max`).
    pub umount_delay: (Duration, Duration),
    /// Share of the pods whose shim gets its umount2 calls delayed.
    pub delayed_pod_share: f64,
    /// Share of the tasks that run out of their 32 MiB memory limit.
    pub oom_share: f64,
    /// No new task starts after this long (the run then drains): bounds the
    /// short run's time whatever the faults cost each task.
    pub run_for: Option<Duration>,
}

impl Default for ChaosParams {
    fn default() -> Self {
        ChaosParams {
            pods: 10,
            tasks_per_pod: 100,
            handler: BRISK_HANDLER.into(),
            seed: 1,
            restart_every: (Duration::from_secs(20), Duration::from_secs(60)),
            fault_every: (Duration::from_secs(2), Duration::from_secs(6)),
            max_shim_kills: 10,
            runc_timeout_secs: 3,
            root_mib: 128,
            task_max: Duration::from_secs(2),
            umount_delay: (Duration::from_secs(2), Duration::from_secs(15)),
            delayed_pod_share: 0.3,
            oom_share: 0.1,
            run_for: None,
        }
    }
}

impl ChaosParams {
    /// The short run of the test command: 3 pods, tasks begun for 150 s,
    /// about 3 minutes in all.
    pub fn short(handler: &str, seed: u64) -> Self {
        ChaosParams {
            pods: 3,
            tasks_per_pod: 30,
            run_for: Some(Duration::from_secs(150)),
            handler: handler.into(),
            seed,
            restart_every: (Duration::from_secs(20), Duration::from_secs(40)),
            max_shim_kills: 2,
            umount_delay: (Duration::from_secs(2), Duration::from_secs(6)),
            delayed_pod_share: 0.5,
            ..Default::default()
        }
    }
}

/// What became of one task.
#[derive(Debug, Clone)]
pub struct TaskRecord {
    pub id: String,
    /// The exit code the task's script exits with (137 for an OOM task).
    pub want_code: i32,
    pub oom: bool,
    /// Its pod's shim was SIGKILLed while it lived: 137 is right too.
    pub shim_killed: bool,
    /// CRI's final (exit code, reason, finished_at in ns).
    pub got: Option<(i32, String, i64)>,
    /// Why the task is wrong or was never seen to end, if it is.
    pub problem: Option<String>,
}

/// A window in which containerd was down, from the SIGTERM or SIGKILL to
/// its CRI answering again (ns since the epoch).
#[derive(Debug, Clone, Copy)]
pub struct Downtime {
    pub from_ns: i64,
    pub to_ns: i64,
}

#[derive(Debug, Default)]
pub struct ChaosReport {
    pub handler: String,
    pub seed: u64,
    pub tasks: Vec<TaskRecord>,
    /// Tasks that never started: RunContainer refused under a fault (hung
    /// runc past its timeout, full root, containerd down, a dead shim).
    pub refused: Vec<String>,
    /// Every fault, in order, with its offset in the run.
    pub faults: Vec<String>,
    pub restarts: usize,
    pub downtimes: Vec<Downtime>,
    /// When containerd's root was full.
    pub full_roots: Vec<Downtime>,
    /// Tasks whose exit the shim told right, which containerd lost on a
    /// full root and a restart ([`excuse_exits_containerd_did_not_write_down`]).
    pub lost_by_full_root: Vec<String>,
    /// Tasks whose exit the shim told right less than [`UNKNOWN_GRACE`]
    /// before containerd went down, which its shutdown cut off
    /// ([`excuse_exits_containerd_did_not_write_down`]).
    pub lost_at_shutdown: Vec<String>,
    /// Containers whose IO containerd's CRI removed (a start it cut off at
    /// a restart) and then failed to reopen at every recovery
    /// ([`io_lost_by_containerd`]).
    pub io_lost_by_containerd: Vec<String>,
    /// Tasks killed with their shim whose exit CRI set to 255 when its
    /// wait on the dead shim failed ([`exits_cri_could_not_wait_for`]).
    pub exits_set_by_cri: Vec<String>,
    /// Bundles containerd renamed to `.ID` to delete and left when its own
    /// shutdown cut the delete off ([`deletes_cut_off_by_shutdown`]);
    /// removed by the run, as an operator would.
    pub bundles_left_by_containerd: Vec<String>,
    pub shim_kills: usize,
    pub delayed_pods: usize,
    /// Init TaskExit events seen more than once, per container.
    pub duplicate_exits: Vec<String>,
    /// Tasks whose later TaskExits (137) containerd's cleanup of a dead
    /// shim published ([`judge_exits`]).
    pub exits_republished_by_containerd: Vec<String>,
    /// Tasks with no TaskExit seen and no downtime near their exit.
    pub missing_exits: Vec<String>,
    /// Tasks with no TaskExit seen whose exit was within a downtime (the
    /// subscriber was down too).
    pub exits_unseen_in_downtime: usize,
    /// Containers UNKNOWN longer than the downtime they overlap plus 2 s.
    pub long_unknown: Vec<String>,
    pub longest_unknown_beyond_downtime: Duration,
    pub list_calls_up: usize,
    pub list_p50: Duration,
    pub list_p99: Duration,
    pub list_max: Duration,
    pub list_max_at: String,
    /// ListContainers over [`LIST_BOUND`] beside an Update over it too:
    /// containerd waited on a shim ([`judge_lists`]).
    pub lists_waiting_on_a_shim: Vec<String>,
    /// ListContainers over the bound with no Update over it in flight.
    pub lists_slow_elsewhere: Vec<String>,
    /// The longest UpdateContainerResources with containerd up.
    pub update_max_up: Duration,
    pub update_calls: usize,
    /// Updates that failed while containerd was up, with their error.
    pub update_failures_up: Vec<String>,
    /// Updates the brisk shim itself logged as slower than 100 ms ("slow
    /// task call"), with the time it gave: an Update slow in containerd's
    /// eyes but not in the shim's waited in containerd (its metadata
    /// store, written under the same status lock).
    pub updates_slow_in_the_shim: Vec<String>,
    pub leaks: Vec<String>,
    /// What containerd's log and the fault log say of each leaked
    /// container, and every warning of a dead shim's cleanup: a leak found
    /// in CI is read from here, the machine being gone.
    pub leak_evidence: Vec<String>,
    pub zombies: Vec<String>,
    pub elapsed: Duration,
    /// Where containerd's log and the fault log of the run were kept.
    pub kept_log: Option<PathBuf>,
}

/// ListContainers while containerd was up must stay under this (brisk).
pub const LIST_BOUND: Duration = Duration::from_millis(100);

/// How long past a downtime a container may stay UNKNOWN.
pub const UNKNOWN_GRACE: Duration = Duration::from_secs(2);

/// How long a task may take to be seen EXITED, faults included.
const TASK_DEADLINE: Duration = Duration::from_secs(180);

/// Runs the chaos soak on a containerd of its own and tears it down.
pub fn run(p: &ChaosParams) -> Result<ChaosReport> {
    let toml = format!(
        "runc_binary = \"{{dir}}/{}\"\nrunc_timeout_secs = {}\n",
        RuncWrapper::SCRIPT_IN_DIR,
        p.runc_timeout_secs
    );
    let mut cd = Containerd::start_with(Options {
        brisk_config_toml: Some(toml),
        root_tmpfs_mib: Some(p.root_mib),
        ..Default::default()
    })?;
    // The stock shim's restarts are that slow: CRI's recovery waits on its
    // unmounts. The downtime counts all of it.
    cd.cri_ready_within = Duration::from_secs(600);
    let started = Instant::now();
    let wrapper = RuncWrapper::install(&cd.dir)?;
    // The stock shim runs `runc` from containerd's PATH: the wrapper too.
    let link = cd.bin_dir().join("runc");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&wrapper.path, &link)?;
    let report = run_on(&mut cd, &wrapper, p, started);
    drop(wrapper);
    let kept = keep_log(&cd, p);
    let mut report = report?;
    report.kept_log = kept;
    report
        .leaks
        .extend(cd.finish_checked().err().map(|e| format!("{e:#}")));
    report.elapsed = started.elapsed();
    Ok(report)
}

/// Copy containerd's log (the shims' logs are in it) and the run's fault
/// log out of the instance, whose teardown removes them: a failed run is
/// read from there. `target/chaos/HANDLER-seedN/`, the last run's.
fn keep_log(cd: &Containerd, p: &ChaosParams) -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/chaos")
        .join(format!("{}-seed{}", p.handler, p.seed));
    std::fs::create_dir_all(&dir).ok()?;
    std::fs::copy(&cd.log_path, dir.join("containerd.log")).ok()?;
    let faults = cd.dir.join("chaos/faults.log");
    let _ = std::fs::copy(faults, dir.join("faults.log"));
    Some(dir)
}

/// A pod slot: the pod a worker runs its tasks in now, and its shim.
#[derive(Debug, Default, Clone)]
struct Slot {
    pod_id: String,
    shim: Option<i32>,
    /// How many times this slot's shim was SIGKILLed.
    kills: u32,
}

/// What the threads of a run share.
struct Shared<'a> {
    p: &'a ChaosParams,
    cri: &'a Cri,
    address: String,
    started: Instant,
    stop: AtomicBool,
    slots: Mutex<Vec<Slot>>,
    /// Running task containers.
    running: Mutex<BTreeSet<String>>,
    downtimes: Mutex<Vec<(i64, Option<i64>)>>,
    /// When containerd's root was full: containerd's own writes fail then.
    full: Mutex<Vec<(i64, Option<i64>)>>,
    faults: Mutex<Vec<String>>,
    fault_log: Mutex<Option<std::fs::File>>,
    trace_dir: PathBuf,
}

impl Shared<'_> {
    fn log(&self, what: String) {
        let line = format!("+{:.1} s {what}", self.started.elapsed().as_secs_f64());
        eprintln!("chaos: {line}");
        self.note(&line);
        self.faults.lock().unwrap().push(line);
    }

    /// A line for the fault log only (kept with containerd's log): what a
    /// task went through, for reading a failed run.
    fn note(&self, line: &str) {
        if let Some(f) = self.fault_log.lock().unwrap().as_mut() {
            let _ = writeln!(f, "{line}");
        }
    }

    fn task_note(&self, what: String) {
        self.note(&format!(
            "+{:.1} s {what}",
            self.started.elapsed().as_secs_f64()
        ));
    }

    /// Whether an Update's failure in `from..to` (ns) is containerd's,
    /// not the shim's: containerd down or restarting, or its root full.
    fn containerd_failing(&self, from: i64, to: i64) -> bool {
        let within = |w: &Mutex<Vec<(i64, Option<i64>)>>| {
            w.lock()
                .unwrap()
                .iter()
                .any(|&(a, b)| a <= to && b.is_none_or(|b| b + 1_000_000_000 >= from))
        };
        within(&self.downtimes) || within(&self.full)
    }

    fn end_full(&self) {
        if let Some(last) = self.full.lock().unwrap().last_mut() {
            last.1.get_or_insert_with(now_ns);
        }
    }

    fn kills_of(&self, slot: usize) -> u32 {
        self.slots.lock().unwrap()[slot].kills
    }
}

fn run_on(
    cd: &mut Containerd,
    wrapper: &RuncWrapper,
    p: &ChaosParams,
    started: Instant,
) -> Result<ChaosReport> {
    // The workers' own client: it reconnects by itself after a restart,
    // and shares the harness's record of created pods for the teardown.
    let mut cri = Cri::connect(
        &cd.socket,
        cd.cri().cgroup_parent(),
        &cd.dir.join("pod-logs"),
    )?;
    cri.adopt_tracked(cd.cri());
    cri.timeout = Duration::from_secs(30);
    let trace_dir = cd.dir.join("chaos");
    std::fs::create_dir_all(&trace_dir)?;
    let sh = Shared {
        p,
        cri: &cri,
        address: cd.address(),
        started,
        stop: AtomicBool::new(false),
        slots: Mutex::new(vec![Slot::default(); p.pods]),
        running: Mutex::new(BTreeSet::new()),
        downtimes: Mutex::new(Vec::new()),
        full: Mutex::new(Vec::new()),
        faults: Mutex::new(Vec::new()),
        fault_log: Mutex::new(std::fs::File::create(trace_dir.join("faults.log")).ok()),
        trace_dir,
    };
    sh.log(format!(
        "seed {} handler {} pods {} tasks/pod {}",
        p.seed, p.handler, p.pods, p.tasks_per_pod
    ));
    let events = ExitEvents::new();
    let ctr = {
        let mut c = crate::ctr::Ctr::new(&cd.address(), "k8s.io");
        c.bin = cd.ctr_bin.clone();
        c
    };
    let mut report = ChaosReport {
        handler: p.handler.clone(),
        seed: p.seed,
        ..Default::default()
    };
    let mut all_shims = BTreeSet::new();
    let (tasks, refused, lists, updates, delayed) = std::thread::scope(|s| {
        let lister = s.spawn(|| list_loop(&sh));
        let updater = s.spawn(|| update_loop(&sh));
        let subscriber = s.spawn(|| events.follow(&ctr, &sh.stop));
        let workers: Vec<_> = (0..p.pods)
            .map(|slot| {
                let sh = &sh;
                s.spawn(move || worker(sh, slot))
            })
            .collect();
        let drive = drive(cd, wrapper, &sh, &workers, &mut all_shims);
        if let Err(e) = &drive {
            sh.log(format!("fault driver failed: {e:#}"));
        }
        let mut tasks = Vec::new();
        let mut refused = Vec::new();
        let mut delayed = 0;
        for w in workers {
            let (t, r, d) = w.join().unwrap_or_default();
            tasks.extend(t);
            refused.extend(r);
            delayed += d;
        }
        // TaskExit events of the last tasks may still be on their way.
        std::thread::sleep(Duration::from_secs(2));
        sh.stop.store(true, Ordering::SeqCst);
        events.stop();
        let lists = lister.join().unwrap_or_default();
        let updates = updater.join().unwrap_or_default();
        let _ = subscriber.join();
        (tasks, refused, lists, updates, delayed)
    });
    report.tasks = tasks;
    report.refused = refused;
    report.delayed_pods = delayed;
    report.faults = sh.faults.into_inner().unwrap();
    report.downtimes = sh
        .downtimes
        .into_inner()
        .unwrap()
        .into_iter()
        .map(|(a, b)| Downtime {
            from_ns: a,
            to_ns: b.unwrap_or(i64::MAX),
        })
        .collect();
    report.restarts = report.downtimes.len();
    report.shim_kills = report
        .faults
        .iter()
        .filter(|f| f.contains("SIGKILL shim"))
        .count();
    report.full_roots = sh
        .full
        .lock()
        .unwrap()
        .iter()
        .map(|&(a, b)| Downtime {
            from_ns: a,
            to_ns: b.unwrap_or(i64::MAX),
        })
        .collect();
    let seen = events.seen();
    let containerd_log = std::fs::read_to_string(&cd.log_path).unwrap_or_default();
    let io_lost = io_lost_by_containerd(&containerd_log);
    judge_exits(&mut report, &seen, &io_lost);
    excuse_exits_containerd_did_not_write_down(
        &mut report,
        &seen,
        &exits_unwritten_on_a_full_root(&containerd_log),
    );
    excuse_io_lost_by_containerd(&mut report, &io_lost);
    excuse_exits_cri_could_not_wait_for(
        &mut report,
        &exits_cri_could_not_wait_for(&containerd_log),
    );
    judge_unknown(&mut report, &lists, &io_lost);
    judge_lists(&mut report, &lists, &updates.timed);
    report.update_calls = updates.timed.len();
    report.update_failures_up = updates.failures;
    report.updates_slow_in_the_shim = updates_slow_in_the_shim(&containerd_log);
    for t in &report.tasks {
        cd.track_id("k8s.io", &t.id);
    }
    for id in &report.refused {
        if let Some(id) = id.split_whitespace().next() {
            cd.track_id("k8s.io", id);
        }
    }
    all_shims.extend(cd.shim_pids());
    report.zombies = crate::soak::zombies_of(&all_shims);
    let leftover = cri.remove_all_pods();
    report.leaks.extend(leftover);
    let containerd_log = std::fs::read_to_string(&cd.log_path).unwrap_or_default();
    let cut_off = deletes_cut_off_by_shutdown(&containerd_log);
    let bundles = cd.dir.join("state/io.containerd.runtime.v2.task/k8s.io");
    for e in std::fs::read_dir(&bundles).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let excused = name
            .strip_prefix('.')
            .is_some_and(|id| cut_off.contains(id));
        if excused && std::fs::remove_dir_all(e.path()).is_ok() {
            report.bundles_left_by_containerd.push(name);
        }
    }
    if let Err(e) = cd.wait_no_leaks(Duration::from_secs(60)) {
        report.leaks.push(format!("{e:#}"));
    }
    if !report.leaks.is_empty() {
        let containerd_log = std::fs::read_to_string(&cd.log_path).unwrap_or_default();
        let fault_log =
            std::fs::read_to_string(cd.dir.join("chaos/faults.log")).unwrap_or_default();
        report.leak_evidence =
            crate::report::leak_evidence(&report.leaks, &containerd_log, &fault_log);
    }
    Ok(report)
}

/// The fault driver, on the thread that owns containerd: restarts it,
/// SIGKILLs shims, hangs runc calls and fills the root on the seeded
/// schedule until every worker is done; then ends every fault it began.
fn drive(
    cd: &mut Containerd,
    wrapper: &RuncWrapper,
    sh: &Shared,
    workers: &[std::thread::ScopedJoinHandle<'_, WorkerResult>],
    all_shims: &mut BTreeSet<i32>,
) -> Result<()> {
    let p = sh.p;
    let mut rng = fastrand::Rng::with_seed(p.seed);
    let between = |rng: &mut fastrand::Rng, (a, b): (Duration, Duration)| {
        a + Duration::from_millis(rng.u64(0..=(b - a).as_millis() as u64))
    };
    let mut next_restart = sh.started + between(&mut rng, p.restart_every);
    let mut next_fault = sh.started + between(&mut rng, p.fault_every);
    let mut hung: BTreeMap<&'static str, Instant> = BTreeMap::new();
    let mut filled: Option<(Filler, Instant)> = None;
    let mut kills = 0;
    let mut last_scan = Instant::now();
    let root = cd.dir.join("root");
    let result = (|| -> Result<()> {
        while !workers.iter().all(|w| w.is_finished()) {
            let now = Instant::now();
            for (sub, until) in hung.clone() {
                if now >= until {
                    wrapper.release(sub);
                    hung.remove(sub);
                    sh.log(format!("runc {sub} no longer hangs"));
                }
            }
            if filled.as_ref().is_some_and(|(_, until)| now >= *until) {
                let (f, _) = filled.take().unwrap();
                drop(f);
                sh.end_full();
                sh.log("root freed".into());
            }
            if now >= next_restart {
                let hard = rng.u8(0..3) == 0;
                restart(cd, sh, hard, &mut filled)?;
                next_restart = Instant::now() + between(&mut rng, p.restart_every);
            }
            if now >= next_fault {
                match rng.u8(0..5) {
                    0 if kills < p.max_shim_kills => {
                        let pick = rng.usize(0..p.pods);
                        if kill_shim(sh, pick) {
                            kills += 1;
                        }
                    }
                    0..=2 => {
                        let sub = ["create", "start", "delete", "kill"][rng.usize(0..4)];
                        let hold = Duration::from_secs(p.runc_timeout_secs)
                            + between(&mut rng, (Duration::from_secs(1), Duration::from_secs(3)));
                        if !hung.contains_key(sub) {
                            wrapper.hang(sub, &[])?;
                            hung.insert(sub, now + hold);
                            sh.log(format!("runc {sub} hangs for {hold:?}"));
                        }
                    }
                    _ => {
                        let hold =
                            between(&mut rng, (Duration::from_secs(2), Duration::from_secs(6)));
                        if filled.is_none() {
                            sh.full.lock().unwrap().push((now_ns(), None));
                            let f = Filler::fill(&root)?;
                            sh.log(format!("root full ({} MiB written) for {hold:?}", f.mib()));
                            filled = Some((f, now + hold));
                        }
                    }
                }
                next_fault = Instant::now() + between(&mut rng, p.fault_every);
            }
            // Note the shims (and so their sockets) for the leak checks.
            if last_scan.elapsed() >= Duration::from_secs(1) && cd.running() {
                all_shims.extend(cd.shim_pids());
                last_scan = Instant::now();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    })();
    for sub in hung.keys() {
        wrapper.release(sub);
    }
    drop(filled);
    sh.end_full();
    if !cd.running() {
        cd.start_again()?;
    }
    result
}

/// Restart containerd (SIGKILL when `hard`, else SIGTERM); a start that
/// fails on the full root is tried again after freeing it.
fn restart(
    cd: &mut Containerd,
    sh: &Shared,
    hard: bool,
    filled: &mut Option<(Filler, Instant)>,
) -> Result<()> {
    let from = now_ns();
    sh.downtimes.lock().unwrap().push((from, None));
    let t = Instant::now();
    if hard {
        cd.kill()?;
    } else {
        cd.stop()?;
    }
    let mut started = cd.start_again();
    if started.is_err() && filled.is_some() {
        sh.log("containerd did not start on a full root; freeing it".into());
        *filled = None;
        sh.end_full();
        started = cd.start_again();
    }
    started?;
    let to = now_ns();
    if let Some(last) = sh.downtimes.lock().unwrap().last_mut() {
        last.1 = Some(to);
    }
    sh.log(format!(
        "containerd restarted ({}): down {:.2} s",
        if hard { "SIGKILL" } else { "SIGTERM" },
        t.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// SIGKILL the shim of pod slot `slot`, if it has one now.
fn kill_shim(sh: &Shared, slot: usize) -> bool {
    let mut slots = sh.slots.lock().unwrap();
    let s = &mut slots[slot];
    let Some(pid) = s.shim.take() else {
        return false;
    };
    s.kills += 1;
    let pod = s.pod_id.clone();
    drop(slots);
    sys::kill(pid, libc::SIGKILL);
    sh.log(format!("SIGKILL shim {pid} of pod {pod} (slot {slot})"));
    true
}

/// A file that fills containerd's root; removed on drop.
struct Filler {
    path: PathBuf,
    written: u64,
}

impl Filler {
    fn fill(root: &Path) -> Result<Filler> {
        let path = root.join("chaos-fill");
        let mut f = std::fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&path)
            .with_context(|| format!("create {}", path.display()))?;
        let mut me = Filler { path, written: 0 };
        let chunk = vec![0xa5u8; 1 << 20];
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(n) => me.written += n as u64,
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => return Err(e).context("fill the root"),
            }
        }
        Ok(me)
    }

    fn mib(&self) -> u64 {
        self.written >> 20
    }
}

impl Drop for Filler {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A worker's tasks, the tasks refused at their start, and how many of
/// its pods had their unmounts delayed.
type WorkerResult = (Vec<TaskRecord>, Vec<String>, usize);

/// One pod slot's tasks, one after another; a pod whose shim was killed is
/// replaced by a new one, as a ReplicaSet would.
fn worker(sh: &Shared, slot: usize) -> WorkerResult {
    let p = sh.p;
    let mut rng =
        fastrand::Rng::with_seed(p.seed ^ (0x9e37_79b9_7f4a_7c15u64.wrapping_mul(slot as u64 + 1)));
    let mut tasks = Vec::new();
    let mut refused = Vec::new();
    let mut delayed = 0;
    let mut generation = 0;
    let mut pod = None::<(Pod, Option<Strace>, u32)>;
    for t in 0..p.tasks_per_pod {
        if sh.stop.load(Ordering::SeqCst) || p.run_for.is_some_and(|d| sh.started.elapsed() > d) {
            break;
        }
        // A dead shim's pod is gone for good: take a new one.
        if let Some((old, strace, kills)) = pod.take() {
            if kills == sh.kills_of(slot) {
                pod = Some((old, strace, kills));
            } else {
                drop(strace);
                remove_pod(sh, &old.id);
            }
        }
        if pod.is_none() {
            match new_pod(sh, slot, generation, &mut rng) {
                Ok((new, strace)) => {
                    delayed += usize::from(strace.is_some());
                    pod = Some((new, strace, sh.kills_of(slot)));
                }
                Err(e) => {
                    refused.push(format!("pod of slot {slot}: {e:#}"));
                    continue;
                }
            }
            generation += 1;
        }
        let (current, _, kills) = pod.as_ref().unwrap();
        let oom = rng.f64() < p.oom_share;
        let code = rng.i32(0..=120);
        let runs = rng.u64(0..=p.task_max.as_millis() as u64);
        let name = format!("s{slot}t{t}");
        let (spec, want_code) = if oom {
            let spec = ContainerSpec::new(
                &name,
                &["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"],
            )
            .memory_limit(32 << 20);
            (spec, 137)
        } else {
            let script = format!("sleep {}; exit {code}", runs as f64 / 1000.0);
            (ContainerSpec::sh(&name, &script), code)
        };
        match run_task(sh, current, &spec) {
            Ok(id) => {
                let mut rec = TaskRecord {
                    id: id.clone(),
                    want_code,
                    oom,
                    shim_killed: false,
                    got: None,
                    problem: None,
                };
                sh.running.lock().unwrap().insert(id.clone());
                let ended = wait_exited(sh, &id);
                sh.running.lock().unwrap().remove(&id);
                rec.shim_killed = sh.kills_of(slot) != *kills;
                sh.task_note(format!("{id}: ended {ended:?}, want {want_code}"));
                match ended {
                    Ok((code, reason, at)) => {
                        rec.got = Some((code, reason.clone(), at));
                        rec.problem = judge_task(&rec, code, &reason);
                    }
                    Err(e) => rec.problem = Some(format!("{e:#}")),
                }
                if reason_is_start_error(&rec) {
                    refused.push(format!("{id} start failed, CRI says {:?}", rec.got));
                } else {
                    tasks.push(rec);
                }
                remove_container(sh, &id);
            }
            Err(e) => refused.push(format!("{e:#}")),
        }
    }
    if let Some((old, strace, _)) = pod.take() {
        drop(strace);
        remove_pod(sh, &old.id);
    }
    sh.slots.lock().unwrap()[slot].shim = None;
    (tasks, refused, delayed)
}

/// A start that failed under a fault (containerd's "StartError", code 128):
/// the task never ran, so it is a refused task, not a lost one.
fn reason_is_start_error(rec: &TaskRecord) -> bool {
    matches!(&rec.got, Some((_, reason, _)) if reason == "StartError")
}

/// What is wrong with a task that CRI saw end with `code` and `reason`.
fn judge_task(rec: &TaskRecord, code: i32, reason: &str) -> Option<String> {
    if rec.shim_killed && code == 137 {
        return None;
    }
    if code != rec.want_code {
        return Some(format!(
            "{}: exit {code} ({reason}), the task exited {}{}",
            rec.id,
            rec.want_code,
            if rec.shim_killed {
                " (or 137 with its shim)"
            } else {
                ""
            }
        ));
    }
    if rec.oom && reason != "OOMKilled" {
        return Some(format!("{}: OOM kill reported as {reason:?}", rec.id));
    }
    None
}

/// A new pod in `slot` (retried while faults refuse it), its shim noted,
/// and its unmounts delayed for some.
fn new_pod(
    sh: &Shared,
    slot: usize,
    generation: u32,
    rng: &mut fastrand::Rng,
) -> Result<(Pod, Option<Strace>)> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let name = format!("chaos-{slot}-{generation}");
    let pod = loop {
        match sh.cri.run_pod_sandbox(&sh.p.handler, &name) {
            Ok(pod) => break pod,
            Err(e) if Instant::now() > deadline => return Err(e.context("RunPodSandbox")),
            Err(_) => {
                // A sandbox half made before the fault is CRI's to clean;
                // ours is to ask again, as kubelet does.
                std::thread::sleep(Duration::from_millis(500));
                let _ = remove_pod_named(sh, &name);
            }
        }
    };
    let shim = sys::shim_daemons(&sh.address).into_iter().find(|&pid| {
        sys::cmdline(pid)
            .unwrap_or_default()
            .windows(2)
            .any(|w| w[0] == "-id" && w[1] == pod.id)
    });
    {
        let mut slots = sh.slots.lock().unwrap();
        slots[slot].pod_id = pod.id.clone();
        slots[slot].shim = shim;
    }
    let p = sh.p;
    let strace = match shim {
        Some(pid) if rng.f64() < p.delayed_pod_share => {
            let (a, b) = p.umount_delay;
            let delay = a + Duration::from_millis(rng.u64(0..=(b - a).as_millis() as u64));
            let out = sh.trace_dir.join(format!("strace-{slot}-{generation}.log"));
            match Strace::attach_shim_only(pid, &out, Some(delay)) {
                Ok(s) => {
                    sh.log(format!(
                        "umount2 of shim {pid} (slot {slot}) delayed {delay:?}"
                    ));
                    Some(s)
                }
                Err(e) => {
                    sh.log(format!("no strace on shim {pid}: {e:#}"));
                    None
                }
            }
        }
        _ => None,
    };
    Ok((pod, strace))
}

/// Remove every pod named `name` that CRI knows (a retried RunPodSandbox's
/// half-made sandbox).
fn remove_pod_named(sh: &Shared, name: &str) -> Result<()> {
    for pod in sh.cri.list_pods()? {
        if pod.metadata.as_ref().is_some_and(|m| m.name == name) {
            remove_pod(sh, &pod.id);
        }
    }
    Ok(())
}

/// Stop and remove a pod, asking again while containerd is down.
fn remove_pod(sh: &Shared, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let r = sh.cri.stop_pod(id).and_then(|()| sh.cri.remove_pod(id));
        match r {
            Ok(()) => return,
            Err(e) if format!("{e:#}").contains("NotFound") => return,
            Err(e) if Instant::now() > deadline => {
                sh.log(format!("pod {id} not removed: {e:#}"));
                return;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

/// Create and start a task. A create refused under a fault is asked again
/// (kubelet does); a start refused is reported by CRI as StartError.
fn run_task(sh: &Shared, pod: &Pod, spec: &ContainerSpec) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let id = loop {
        match sh.cri.create_container(pod, spec) {
            Ok(id) => break id,
            Err(e) if Instant::now() > deadline => return Err(e.context("CreateContainer")),
            Err(e) if format!("{e:#}").contains("NotFound") => {
                return Err(e.context("CreateContainer in a pod that is gone"))
            }
            Err(e) => {
                sh.task_note(format!("{}: create refused: {e:#}", spec.name));
                std::thread::sleep(Duration::from_millis(500))
            }
        }
    };
    sh.task_note(format!("{}: created {id}", spec.name));
    if let Err(e) = sh.cri.start_container(&id) {
        // The start may still have happened (an answer lost in a restart):
        // what CRI says next decides.
        sh.task_note(format!("{id}: start failed: {e:#}"));
    }
    Ok(id)
}

/// Wait until CRI says `id` EXITED; errors while containerd restarts are
/// not answers. (exit code, reason, finished_at).
fn wait_exited(sh: &Shared, id: &str) -> Result<(i32, String, i64)> {
    let deadline = Instant::now() + TASK_DEADLINE;
    let mut last = String::from("no answer");
    let mut created_since = None::<Instant>;
    let mut unknown_since = None::<Instant>;
    let mut stopped_at = None::<Instant>;
    while Instant::now() < deadline {
        let status = sh.cri.container_status(id);
        if !matches!(&status, Ok(st) if st.state == ContainerState::ContainerUnknown as i32) {
            unknown_since = None;
        }
        match status {
            Ok(st) if st.state == ContainerState::ContainerExited as i32 => {
                return Ok((st.exit_code, st.reason, st.finished_at))
            }
            // kubelet's SyncPod kills a container it finds UNKNOWN; so does
            // this driver once the grace is past. The UNKNOWN time is
            // judged all the same (judge_unknown).
            Ok(st) if st.state == ContainerState::ContainerUnknown as i32 => {
                let since = *unknown_since.get_or_insert_with(Instant::now);
                let due = stopped_at.is_none_or(|t| t.elapsed() > UNKNOWN_GRACE);
                if since.elapsed() > UNKNOWN_GRACE && due {
                    let stop = sh.cri.stop_container(id, 0);
                    sh.task_note(format!("{id}: UNKNOWN, stopped as kubelet would: {stop:?}"));
                    stopped_at = Some(Instant::now());
                }
                last = "UNKNOWN".into();
            }
            // A start refused under a fault leaves the container CREATED.
            Ok(st) if st.state == ContainerState::ContainerCreated as i32 => {
                let since = *created_since.get_or_insert_with(Instant::now);
                if since.elapsed() > Duration::from_secs(10) {
                    return Ok((128, "StartError".into(), 0));
                }
                last = "CREATED".into();
            }
            Ok(st) => last = crate::cri::state_name(st.state),
            Err(e) => last = format!("{e:#}"),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("{id} not EXITED after {TASK_DEADLINE:?}: last {last}")
}

/// Remove a container, asking again while containerd is down.
fn remove_container(sh: &Shared, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match sh.cri.remove_container(id) {
            Ok(()) => return,
            Err(e) if format!("{e:#}").contains("NotFound") => return,
            Err(e) if Instant::now() > deadline => {
                sh.log(format!("container {id} not removed: {e:#}"));
                return;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

/// One ListContainers call: when, how long, and the containers UNKNOWN in
/// its answer (None: no answer).
struct ListCall {
    start_ns: i64,
    took: Duration,
    unknown: Option<Vec<String>>,
}

/// ListContainers back to back, as kubelet's PLEG relist.
fn list_loop(sh: &Shared) -> Vec<ListCall> {
    let mut out = Vec::new();
    while !sh.stop.load(Ordering::SeqCst) {
        let start_ns = now_ns();
        let t = Instant::now();
        let r = sh.cri.list_containers(None);
        let took = t.elapsed();
        let unknown = r.ok().map(|cs| {
            cs.into_iter()
                .filter(|c| c.state == ContainerState::ContainerUnknown as i32)
                .map(|c| c.id)
                .collect()
        });
        let failed = unknown.is_none();
        out.push(ListCall {
            start_ns,
            took,
            unknown,
        });
        if failed {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    out
}

/// UpdateContainerResources on every running task every second, as
/// kubelet's resource manager. (calls, failures while containerd was up).
fn update_loop(sh: &Shared) -> Updates {
    let mut out = Updates::default();
    while !sh.stop.load(Ordering::SeqCst) {
        let t = Instant::now();
        let ids: Vec<String> = sh.running.lock().unwrap().iter().cloned().collect();
        for id in ids {
            let r = LinuxContainerResources {
                cpu_shares: 512 + (out.timed.len() % 2) as i64,
                ..Default::default()
            };
            let from = now_ns();
            let t = Instant::now();
            let res = sh.cri.update_container_resources(&id, r);
            out.timed.push(TimedCall {
                start_ns: from,
                took: t.elapsed(),
            });
            if let Err(e) = res {
                // Gone meanwhile, or containerd down: not the shim's answer.
                let still = sh.running.lock().unwrap().contains(&id);
                if still && !sh.containerd_failing(from - 1_000_000_000, now_ns()) {
                    sh.task_note(format!("{id}: update failed: {e:#}"));
                    out.failures.push(format!("{id}: {e:#}"));
                }
            }
        }
        std::thread::sleep(Duration::from_secs(1).saturating_sub(t.elapsed()));
    }
    out
}

/// The update loop's calls: each one's start and length, and the failures
/// with containerd up.
#[derive(Default)]
struct Updates {
    timed: Vec<TimedCall>,
    failures: Vec<String>,
}

#[derive(Clone, Copy)]
struct TimedCall {
    start_ns: i64,
    took: Duration,
}

impl TimedCall {
    fn end_ns(&self) -> i64 {
        self.start_ns + self.took.as_nanos() as i64
    }

    fn overlaps(&self, from_ns: i64, to_ns: i64) -> bool {
        self.start_ns <= to_ns && self.end_ns() >= from_ns
    }
}

/// Per container: each init TaskExit's status and when it came (ns).
type ExitsSeen = BTreeMap<String, Vec<(Option<u32>, i64)>>;

/// Init TaskExit events of the k8s.io namespace, counted per container, from
/// `ctr events` started again whenever containerd's restart ends it.
struct ExitEvents {
    /// Per container: each init TaskExit's status and when it came (ns).
    seen: Mutex<ExitsSeen>,
    child: AtomicI32,
    stopped: AtomicBool,
}

impl ExitEvents {
    fn new() -> Self {
        ExitEvents {
            seen: Mutex::new(BTreeMap::new()),
            child: AtomicI32::new(0),
            stopped: AtomicBool::new(false),
        }
    }

    fn follow(&self, ctr: &crate::ctr::Ctr, stop: &AtomicBool) {
        while !stop.load(Ordering::SeqCst) && !self.stopped.load(Ordering::SeqCst) {
            let child = ctr
                .command(&["events"])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn();
            let Ok(mut child) = child else {
                std::thread::sleep(Duration::from_millis(200));
                continue;
            };
            self.child.store(child.id() as i32, Ordering::SeqCst);
            if let Some(out) = child.stdout.take() {
                for line in std::io::BufReader::new(out).lines().map_while(|l| l.ok()) {
                    if let Some((id, status)) = init_exit_of(&line) {
                        let mut seen = self.seen.lock().unwrap();
                        seen.entry(id).or_default().push((status, now_ns()));
                    }
                }
            }
            let _ = child.wait();
            self.child.store(0, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        let pid = self.child.load(Ordering::SeqCst);
        if pid > 0 {
            sys::kill(pid, libc::SIGTERM);
        }
    }

    fn seen(&self) -> ExitsSeen {
        self.seen.lock().unwrap().clone()
    }
}

/// The container id and exit status of an init process's `/tasks/exit`
/// line of `ctr events` (its `id` is the container's), else None.
fn init_exit_of(line: &str) -> Option<(String, Option<u32>)> {
    if !line.contains("/tasks/exit") {
        return None;
    }
    let field = |key: &str| {
        let at = line.find(&format!("\"{key}\":\""))? + key.len() + 4;
        let len = line[at..].find('"')?;
        Some(line[at..at + len].to_string())
    };
    let (cid, id) = (field("container_id")?, field("id")?);
    let status = line.find("\"exit_status\":").and_then(|at| {
        let rest = &line[at + 14..];
        let end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        rest[..end].parse().ok()
    });
    // An exit status of 0 is left out of the JSON.
    let status = status.or(Some(0));
    (cid == id).then_some((cid, status))
}

/// Exactly one TaskExit per task: duplicates fail; a missing one fails
/// unless the task ended while containerd (and so the subscriber) was down.
///
/// One duplicate is containerd's: when a task's connection to its shim
/// closes while the task is still in containerd's task list (its shim was
/// killed, even mid-Delete, or CRI's recovery lost the container and its
/// Delete never came), containerd's cleanup of the dead shim publishes a
/// TaskExit of its own, with the 137 the shim's `delete` answers. Such a
/// task (in `lost`, or killed with its shim) whose later TaskExits all say
/// 137 is counted apart, under either shim. So is one whose later 137s
/// came after a restart of containerd that began after its first TaskExit:
/// containerd killed between the task's Delete and its own bookkeeping
/// finds the task again when it starts, asks the pod's shim for it, and,
/// the shim having deleted it, runs the same cleanup.
fn judge_exits(r: &mut ChaosReport, seen: &ExitsSeen, lost: &BTreeSet<String>) {
    for t in &r.tasks {
        let told = seen.get(&t.id).map(Vec::as_slice).unwrap_or_default();
        let n = told.len();
        let first_at = told.first().map_or(0, |e| e.1);
        let restarted_between = |at: i64| {
            r.downtimes
                .iter()
                .any(|d| d.from_ns >= first_at && d.from_ns <= at)
        };
        let later_are_cleanups = |allowed: &dyn Fn(i64) -> bool| {
            told[1.min(n)..]
                .iter()
                .all(|&(code, at)| code == Some(137) && allowed(at))
        };
        let by_cleanup = ((t.shim_killed || lost.contains(&t.id)) && later_are_cleanups(&|_| true))
            || later_are_cleanups(&restarted_between);
        let listed = || {
            let codes: Vec<String> = told
                .iter()
                .map(|(code, at)| format!("{code:?} at {at}"))
                .collect();
            format!("{}: {n} TaskExit [{}]", t.id, codes.join(", "))
        };
        if n > 1 && by_cleanup {
            r.exits_republished_by_containerd.push(listed());
        } else if n > 1 {
            r.duplicate_exits.push(listed());
        } else if n == 0 {
            let at = t.got.as_ref().map(|g| g.2).unwrap_or(0);
            let near = r.downtimes.iter().any(|d| {
                at >= d.from_ns - 1_000_000_000 && at <= d.to_ns.saturating_add(3_000_000_000)
            });
            if near {
                r.exits_unseen_in_downtime += 1;
            } else {
                r.missing_exits
                    .push(format!("{}: no TaskExit (exit at {at})", t.id));
            }
        }
    }
}

/// A task CRI reports as 255 (Unknown) whose one TaskExit carried its
/// real code, which containerd could not write down before a restart: the
/// shim told the exit, and containerd, restarted, found the task gone and
/// the status unwritten. containerd's loss, the same under either shim:
/// counted apart, not as the shim's problem. Two ways it happens:
/// - on a full root: containerd's status checkpoint fails with ENOSPC and
///   its event handler backs off. Known from its log (`unwritten`: the
///   exit status its handling of the TaskExit failed to write on "no space
///   left on device"), or, where the log says nothing, from the TaskExit
///   arriving while the root was full;
/// - at its own shutdown: the TaskExit came less than [`UNKNOWN_GRACE`]
///   before containerd went down, while CRI was still deleting the task
///   it must delete before it writes the status.
fn excuse_exits_containerd_did_not_write_down(
    r: &mut ChaosReport,
    seen: &ExitsSeen,
    unwritten: &BTreeMap<String, u32>,
) {
    let full = r.full_roots.clone();
    let downs = r.downtimes.clone();
    let s = 1_000_000_000i64;
    for t in &mut r.tasks {
        let Some((255, reason, _)) = &t.got else {
            continue;
        };
        if reason != "Unknown" || t.problem.is_none() {
            continue;
        }
        let told = seen.get(&t.id).map(Vec::as_slice).unwrap_or_default();
        // The first TaskExit is the shim's; a later one is containerd's
        // cleanup's, judged so already (`judge_exits`).
        let republished = r
            .exits_republished_by_containerd
            .iter()
            .any(|l| l.starts_with(&t.id));
        let (Some((Some(code), at)), true) = (told.first(), told.len() == 1 || republished) else {
            continue;
        };
        if *code as i32 != t.want_code {
            continue;
        }
        let on_full_root = unwritten.get(&t.id) == Some(code)
            || full
                .iter()
                .any(|w| *at >= w.from_ns - s && *at <= w.to_ns.saturating_add(s));
        let at_shutdown = downs
            .iter()
            .any(|d| d.from_ns >= *at && d.from_ns - *at < UNKNOWN_GRACE.as_nanos() as i64);
        let line = format!("{}: TaskExit said {code}, CRI says 255 (Unknown)", t.id);
        if on_full_root {
            r.lost_by_full_root.push(line);
        } else if at_shutdown {
            r.lost_at_shutdown.push(line);
        } else {
            continue;
        }
        t.problem = None;
    }
}

/// The brisk shim's "slow task call" lines for Update in containerd's log,
/// as "ID took=…".
fn updates_slow_in_the_shim(containerd_log: &str) -> Vec<String> {
    containerd_log
        .lines()
        .filter(|l| l.contains(r#"msg="slow task call""#) && l.contains("call=update"))
        .map(|l| {
            let field = |k: &str| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix(k))
                    .unwrap_or("?")
                    .to_string()
            };
            format!("{} took={}", field("id="), field("took="))
        })
        .collect()
}

/// What containerd's log says it failed to write down on a full root: per
/// container, the exit status of a TaskExit whose handling failed on "no
/// space left on device".
fn exits_unwritten_on_a_full_root(containerd_log: &str) -> BTreeMap<String, u32> {
    const ID: &str = "TaskExit{ContainerID:";
    const STATUS: &str = "ExitStatus:";
    containerd_log
        .lines()
        .filter(|l| l.contains("no space left on device"))
        .filter_map(|l| {
            let rest = &l[l.find(ID)? + ID.len()..];
            let id = &rest[..rest.find(',')?];
            let st = &rest[rest.find(STATUS)? + STATUS.len()..];
            let code = st[..st.find(',')?].parse().ok()?;
            Some((id.to_string(), code))
        })
        .collect()
}

/// The containers containerd says it could not recover because their IO
/// FIFOs are gone. CRI makes those FIFOs in its own state directory and
/// removes them itself when a StartContainer fails; a restart that cuts
/// off that failed start before its task Delete leaves a task whose FIFOs
/// no longer exist, and every recovery after fails to reopen them and
/// keeps the container UNKNOWN. No shim takes part in it (the same
/// happens under the stock shim); what the shim must still do is end and
/// delete the task when CRI asks (judged by the leak checks).
///
/// A container CRI's recovery could not load at all because it could not
/// write its status on a full root ("Failed to load container" … "no space
/// left on device") is lost the same way: CRI drops it from its store.
fn io_lost_by_containerd(containerd_log: &str) -> BTreeSet<String> {
    let id_after = |l: &str, mark: &str| {
        let rest = &l[l.find(mark)? + mark.len()..];
        Some(rest[..rest.find('\\')?].to_string())
    };
    containerd_log
        .lines()
        .filter_map(|l| {
            if l.contains("error creating fifo") {
                id_after(l, r#"Failed to load container status for \""#)
            } else if l.contains("no space left on device") {
                id_after(l, r#"Failed to load container \""#)
            } else {
                None
            }
        })
        .collect()
}

/// The containers whose bundle containerd began to delete while it was
/// itself shutting down. containerd deletes a bundle by renaming it to
/// `.ID` and removing that; it skips such hidden directories when it
/// starts, so a delete its own exit cuts off leaves one for good, with
/// either shim. Read from containerd's log: the task's "cleaning up after
/// shim disconnected" after that same run of containerd said "Stop CRI
/// service".
fn deletes_cut_off_by_shutdown(containerd_log: &str) -> BTreeSet<String> {
    const MARK: &str = r#"msg="cleaning up after shim disconnected" id="#;
    let mut stopping = false;
    let mut out = BTreeSet::new();
    for line in containerd_log.lines() {
        if line.contains(r#"msg="starting containerd""#) {
            stopping = false;
        } else if line.contains(r#"msg="Stop CRI service""#) {
            stopping = true;
        } else if let Some(at) = line.find(MARK).filter(|_| stopping) {
            let rest = &line[at + MARK.len()..];
            out.insert(
                rest.split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_string(),
            );
        }
    }
    out
}

/// The update failures `"ID: error"` counted by their error (the id left
/// out), most frequent first.
fn failure_kinds(failures: &[String]) -> Vec<(String, usize)> {
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for f in failures {
        let error = f.split_once(": ").map_or(f.as_str(), |(_, e)| e);
        *kinds.entry(error.replace('\n', " ")).or_default() += 1;
    }
    let mut v: Vec<(String, usize)> = kinds.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    v
}

/// A task in `io_lost` ran into [`io_lost_by_containerd`]: whatever CRI
/// says of its end is containerd's, counted apart.
fn excuse_io_lost_by_containerd(r: &mut ChaosReport, io_lost: &BTreeSet<String>) {
    for t in &mut r.tasks {
        if io_lost.contains(&t.id) {
            r.io_lost_by_containerd.push(format!(
                "{}: CRI says {:?}, the task was to exit {}",
                t.id, t.got, t.want_code
            ));
            t.problem = None;
        }
    }
}

/// The containers whose exit containerd's CRI set to 255 itself because
/// its wait on the task failed ("failed to get task exit status"). When a
/// shim dies, CRI's Wait on it fails as the connection closes, mostly
/// before containerd's cleanup of the dead shim publishes the TaskExit
/// (with the 137 the shim's `delete` gives). Under either shim, the exit of
/// a task killed with its shim is then what containerd reports.
fn exits_cri_could_not_wait_for(containerd_log: &str) -> BTreeSet<String> {
    const MARK: &str = r#"msg="failed to get task exit status for \""#;
    containerd_log
        .lines()
        .filter_map(|l| {
            let rest = &l[l.find(MARK)? + MARK.len()..];
            Some(rest[..rest.find('\\')?].to_string())
        })
        .collect()
}

/// A task killed with its shim that CRI says exited 255 after its wait
/// failed ([`exits_cri_could_not_wait_for`]): containerd's report, counted
/// apart. Under a live shim the same 255 stays a problem.
fn excuse_exits_cri_could_not_wait_for(r: &mut ChaosReport, unwaited: &BTreeSet<String>) {
    for t in &mut r.tasks {
        if t.shim_killed
            && t.problem.is_some()
            && matches!(&t.got, Some((255, _, _)))
            && unwaited.contains(&t.id)
        {
            r.exits_set_by_cri.push(format!(
                "{}: CRI says 255, the task was to exit {}",
                t.id, t.want_code
            ));
            t.problem = None;
        }
    }
}

/// No container UNKNOWN longer than containerd's downtime it overlaps plus
/// [`UNKNOWN_GRACE`]: runs of UNKNOWN answers per container. Containers
/// whose IO containerd lost (`io_lost`) are UNKNOWN by containerd's doing.
fn judge_unknown(r: &mut ChaosReport, lists: &[ListCall], io_lost: &BTreeSet<String>) {
    // Per container: (first seen UNKNOWN, last seen UNKNOWN) of the current run.
    let mut runs: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    let mut done: Vec<(String, i64, i64)> = Vec::new();
    for c in lists {
        let Some(unknown) = &c.unknown else { continue };
        let now: BTreeSet<&String> = unknown.iter().collect();
        let ended: Vec<String> = runs
            .keys()
            .filter(|id| !now.contains(id))
            .cloned()
            .collect();
        for id in ended {
            let (a, b) = runs.remove(&id).unwrap();
            done.push((id, a, b));
        }
        for id in unknown {
            runs.entry(id.clone())
                .and_modify(|e| e.1 = c.start_ns)
                .or_insert((c.start_ns, c.start_ns));
        }
    }
    done.extend(runs.into_iter().map(|(id, (a, b))| (id, a, b)));
    done.retain(|(id, _, _)| !io_lost.contains(id));
    for (id, a, b) in done {
        let down: i64 = r
            .downtimes
            .iter()
            .map(|d| (b.min(d.to_ns) - a.max(d.from_ns)).max(0))
            .sum();
        let beyond = Duration::from_nanos(((b - a) - down).max(0) as u64);
        r.longest_unknown_beyond_downtime = r.longest_unknown_beyond_downtime.max(beyond);
        if beyond > UNKNOWN_GRACE {
            r.long_unknown.push(format!(
                "{id}: UNKNOWN for {:.1} s, {:.1} s of it with containerd up",
                (b - a) as f64 / 1e9,
                beyond.as_secs_f64()
            ));
        }
    }
}

/// ListContainers latency, counting only calls made wholly while
/// containerd was up, and which of the slow ones waited on a shim.
///
/// CRI answers ListContainers from its own store, reading each
/// container's status under that container's lock. The CRI call that holds
/// the lock while it waits on the shim is UpdateContainerResources (its
/// task Update; the hazard brisk removes). A ListContainers over the bound
/// waited on a shim when an Update in flight beside it took longer than
/// the bound too; one with no such Update lost its time elsewhere (on this
/// 2-core machine, to the scheduler) and is reported, not held against the
/// shim.
fn judge_lists(r: &mut ChaosReport, lists: &[ListCall], updates: &[TimedCall]) {
    let up_between = |from: i64, to: i64| {
        !r.downtimes
            .iter()
            .any(|d| d.from_ns <= to && d.to_ns >= from)
    };
    let up: Vec<&ListCall> = lists
        .iter()
        .filter(|c| c.unknown.is_some())
        .filter(|c| up_between(c.start_ns, c.start_ns + c.took.as_nanos() as i64))
        .collect();
    let updates_up: Vec<&TimedCall> = updates
        .iter()
        .filter(|u| up_between(u.start_ns, u.end_ns()))
        .collect();
    r.update_max_up = updates_up.iter().map(|u| u.took).max().unwrap_or_default();
    let first = lists.first().map_or(0, |c| c.start_ns);
    let at = |ns: i64| format!("+{:.1} s", (ns - first) as f64 / 1e9);
    for c in up.iter().filter(|c| c.took > LIST_BOUND) {
        let end = c.start_ns + c.took.as_nanos() as i64;
        let beside = updates_up
            .iter()
            .filter(|u| u.took > LIST_BOUND && u.overlaps(c.start_ns, end))
            .map(|u| u.took)
            .max();
        match beside {
            Some(u) => r.lists_waiting_on_a_shim.push(format!(
                "ListContainers took {:?} at {} beside an Update of {u:?} (bound {LIST_BOUND:?})",
                c.took,
                at(c.start_ns)
            )),
            None => r
                .lists_slow_elsewhere
                .push(format!("{:?} at {}", c.took, at(c.start_ns))),
        }
    }
    let secs: Vec<f64> = up.iter().map(|c| c.took.as_secs_f64()).collect();
    r.list_calls_up = up.len();
    r.list_p50 = Duration::from_secs_f64(quantile(&secs, 0.5).max(0.0));
    r.list_p99 = Duration::from_secs_f64(quantile(&secs, 0.99).max(0.0));
    if let Some(worst) = up.iter().max_by_key(|c| c.took) {
        r.list_max = worst.took;
        r.list_max_at = at(worst.start_ns);
    }
}

impl ChaosReport {
    /// Every task right, every exit told once, no long UNKNOWN, nothing
    /// left; and for brisk, ListContainers under [`LIST_BOUND`] while
    /// containerd was up. (The stock shim is measured the same way, for
    /// comparison; its stalls are the hazard brisk removes.)
    pub fn passed(&self) -> bool {
        self.problems().is_empty()
    }

    pub fn problems(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .tasks
            .iter()
            .filter_map(|t| t.problem.clone())
            .collect();
        out.extend(self.duplicate_exits.iter().cloned());
        out.extend(self.missing_exits.iter().cloned());
        out.extend(self.long_unknown.iter().cloned());
        out.extend(self.leaks.iter().cloned());
        out.extend(self.zombies.iter().cloned());
        if self.tasks.is_empty() {
            out.push("no task ran".into());
        }
        if self.handler == BRISK_HANDLER {
            out.extend(self.lists_waiting_on_a_shim.iter().cloned());
        }
        out
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        let oom = self.tasks.iter().filter(|t| t.oom).count();
        let oom_right = self
            .tasks
            .iter()
            .filter(|t| t.oom && t.problem.is_none())
            .count();
        let killed = self.tasks.iter().filter(|t| t.shim_killed).count();
        let down: Vec<f64> = self
            .downtimes
            .iter()
            .map(|d| (d.to_ns - d.from_ns) as f64 / 1e9)
            .collect();
        let hangs = self
            .faults
            .iter()
            .filter(|f| f.contains(" hangs for "))
            .count();
        let fills = self
            .faults
            .iter()
            .filter(|f| f.contains("root full"))
            .count();
        s.push_str(&format!(
            "chaos {} seed {}: {} tasks ended ({} with a problem), {} refused at start, elapsed {:.0} s\n",
            self.handler,
            self.seed,
            self.tasks.len(),
            self.tasks.iter().filter(|t| t.problem.is_some()).count(),
            self.refused.len(),
            self.elapsed.as_secs_f64()
        ));
        s.push_str(&format!(
            "faults: {} containerd restarts (down total {:.1} s, max {:.1} s), {} shims SIGKILLed ({} tasks with them), {} pods with delayed umount2, {} runc hangs, {} full roots, {} OOM tasks ({} reported OOMKilled)\n",
            self.restarts,
            down.iter().sum::<f64>(),
            down.iter().copied().fold(0.0, f64::max),
            self.shim_kills,
            killed,
            self.delayed_pods,
            hangs,
            fills,
            oom,
            oom_right
        ));
        s.push_str(&format!(
            "TaskExit: {} duplicated, {} missing, {} not seen while containerd was down, {} sent again (137) by containerd's cleanup of a dead shim {:?}\n",
            self.duplicate_exits.len(),
            self.missing_exits.len(),
            self.exits_unseen_in_downtime,
            self.exits_republished_by_containerd.len(),
            self.exits_republished_by_containerd
        ));
        s.push_str(&format!(
            "exits told right by the shim, lost by containerd on a full root and a restart: {} {:?}\n",
            self.lost_by_full_root.len(),
            self.lost_by_full_root
        ));
        s.push_str(&format!(
            "exits told right by the shim, cut off by containerd's shutdown: {} {:?}\n",
            self.lost_at_shutdown.len(),
            self.lost_at_shutdown
        ));
        s.push_str(&format!(
            "containers containerd's recovery lost (IO it removed, or a status it could not write on a full root): {} {:?}\n",
            self.io_lost_by_containerd.len(),
            self.io_lost_by_containerd
        ));
        s.push_str(&format!(
            "tasks killed with their shim, set to 255 by CRI when its wait on the dead shim failed: {} {:?}\n",
            self.exits_set_by_cri.len(),
            self.exits_set_by_cri
        ));
        s.push_str(&format!(
            "bundles containerd left hidden when its shutdown cut their delete off: {} {:?}\n",
            self.bundles_left_by_containerd.len(),
            self.bundles_left_by_containerd
        ));
        s.push_str(&format!(
            "UNKNOWN beyond downtime: longest {:.1} s (grace {:?}), {} over\n",
            self.longest_unknown_beyond_downtime.as_secs_f64(),
            UNKNOWN_GRACE,
            self.long_unknown.len()
        ));
        s.push_str(&format!(
            "ListContainers with containerd up: {} calls, p50 {:?}, p99 {:?}, max {:?} at {}\n",
            self.list_calls_up, self.list_p50, self.list_p99, self.list_max, self.list_max_at
        ));
        s.push_str(&format!(
            "ListContainers over {LIST_BOUND:?}: {} beside an Update over it (waiting on a shim), {} with none {:?}\n",
            self.lists_waiting_on_a_shim.len(),
            self.lists_slow_elsewhere.len(),
            self.lists_slow_elsewhere
        ));
        s.push_str(&format!(
            "UpdateContainerResources: {} calls, {} failed with containerd up, max {:?} with containerd up\n",
            self.update_calls,
            self.update_failures_up.len(),
            self.update_max_up
        ));
        s.push_str(&format!(
            "Updates the shim itself took over 100 ms on: {} {:?}\n",
            self.updates_slow_in_the_shim.len(),
            self.updates_slow_in_the_shim
        ));
        s.push_str(&format!(
            "leaks: {:?}\nzombies: {:?}\n",
            self.leaks, self.zombies
        ));
        if let Some(k) = &self.kept_log {
            s.push_str(&format!(
                "containerd and fault logs kept in {}\n",
                k.display()
            ));
        }
        for p in self.problems().iter().take(20) {
            s.push_str(&format!("problem: {p}\n"));
        }
        for e in &self.leak_evidence {
            s.push_str(&format!("leak evidence: {e}\n"));
        }
        for (error, n) in failure_kinds(&self.update_failures_up) {
            s.push_str(&format!("update failures: {n} x {error}\n"));
        }
        for e in self.refused.iter().take(5) {
            s.push_str(&format!("refused: {e}\n"));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_exit_lines_name_their_container() {
        let init = r#"2026-12-03 10:00:00.1 +0000 UTC k8s.io /tasks/exit {"container_id":"abc","id":"abc","pid":7,"exit_status":3,"exited_at":{}}"#;
        let exec = r#"2026-12-03 10:00:00.1 +0000 UTC k8s.io /tasks/exit {"container_id":"abc","id":"e1","pid":8,"exit_status":0}"#;
        let other =
            r#"2026-12-03 10:00:00.1 +0000 UTC k8s.io /tasks/start {"container_id":"abc","pid":7}"#;
        assert_eq!(init_exit_of(init), Some(("abc".into(), Some(3))));
        assert_eq!(init_exit_of(exec), None);
        assert_eq!(init_exit_of(other), None);
        let zero = r#"2026-12-03 10:00:00.1 +0000 UTC k8s.io /tasks/exit {"container_id":"abc","id":"abc","pid":7,"exited_at":{}}"#;
        assert_eq!(init_exit_of(zero), Some(("abc".into(), Some(0))));
    }

    #[test]
    fn an_exit_told_right_but_unwritten_on_a_full_root_is_containerds() {
        let s = 1_000_000_000i64;
        let task = |id: &str| TaskRecord {
            id: id.into(),
            want_code: 18,
            oom: false,
            shim_killed: false,
            got: Some((255, "Unknown".into(), 40 * s)),
            problem: Some("wrong".into()),
        };
        let mut r = ChaosReport {
            tasks: vec![task("a"), task("b"), task("c")],
            full_roots: vec![Downtime {
                from_ns: 10 * s,
                to_ns: 14 * s,
            }],
            ..Default::default()
        };
        let mut seen = BTreeMap::new();
        // a: told 18 while the root was full: containerd's loss.
        seen.insert("a".to_string(), vec![(Some(18), 12 * s)]);
        // b: told 18 with the root not full: the wrong code stays a problem.
        seen.insert("b".to_string(), vec![(Some(18), 30 * s)]);
        // c: told a wrong code: the shim's problem.
        seen.insert("c".to_string(), vec![(Some(255), 12 * s)]);
        excuse_exits_containerd_did_not_write_down(&mut r, &seen, &BTreeMap::new());
        assert_eq!(r.lost_by_full_root.len(), 1, "{:?}", r.lost_by_full_root);
        assert!(r.tasks[0].problem.is_none());
        assert!(r.tasks[1].problem.is_some());
        assert!(r.tasks[2].problem.is_some());
    }

    /// The long run's 3684a60a: the TaskExit (code 0) came before the root
    /// filled, CRI's Delete waited 5 s on a hung `runc delete`, and the
    /// status write after it failed on ENOSPC; then a restart.
    #[test]
    fn an_exit_whose_write_containerd_logged_failing_on_enospc_is_containerds() {
        let log = concat!(
            r#"time="2026-12-04T19:06:52.693344615Z" level=error msg="failed to handle container TaskExit event &TaskExit{ContainerID:3684,ID:3684,Pid:31909,ExitStatus:0,ExitedAt:2026-12-04 19:06:47.707742301 +0000 UTC,XXX_unrecognized:[],}" error="failed to update container state: failed to checkpoint status to \"/x/status\": write /x/.tmp-status1: no space left on device""#,
            "\n",
            r#"time="2026-12-04T19:06:54.270475727Z" level=error msg="Failed to handle backOff event &TaskExit{ContainerID:fea7,ID:fea7,Pid:32394,ExitStatus:28,ExitedAt:2026-12-04 19:06:47.854250212 +0000 UTC,XXX_unrecognized:[],} for fea7" error="failed to handle container TaskExit event: failed to update container state: failed to checkpoint status to \"/x/status\": write /x/.tm: no space left on device""#,
            "\n",
            r#"time="2026-12-04T19:06:52.670045734Z" level=error msg="failed to handle container TaskExit event &TaskExit{ContainerID:other,ID:other,Pid:1,ExitStatus:9,ExitedAt:2026-12-04 19:06:47 +0000 UTC,XXX_unrecognized:[],}" error="failed to stop container: failed to delete task: ttrpc: closed: unknown""#,
            "\n",
        );
        let unwritten = exits_unwritten_on_a_full_root(log);
        assert_eq!(
            unwritten,
            BTreeMap::from([("3684".to_string(), 0), ("fea7".to_string(), 28)])
        );
        let s = 1_000_000_000i64;
        let task = |id: &str, want_code| TaskRecord {
            id: id.into(),
            want_code,
            oom: false,
            shim_killed: false,
            got: Some((255, "Unknown".into(), 60 * s)),
            problem: Some("wrong".into()),
        };
        let mut r = ChaosReport {
            tasks: vec![task("3684", 0), task("other", 9)],
            ..Default::default()
        };
        let mut seen = BTreeMap::new();
        seen.insert("3684".to_string(), vec![(Some(0), 10 * s)]);
        seen.insert("other".to_string(), vec![(Some(9), 10 * s)]);
        excuse_exits_containerd_did_not_write_down(&mut r, &seen, &unwritten);
        assert!(r.tasks[0].problem.is_none());
        assert!(
            r.tasks[1].problem.is_some(),
            "no ENOSPC, no full root, no restart"
        );
        assert_eq!(r.lost_by_full_root.len(), 1);
    }

    /// The long run's 54676388: its TaskExit (33) came 34 ms before
    /// containerd's SIGTERM, whose shutdown cut off CRI's handling of it.
    #[test]
    fn an_exit_told_just_before_containerd_went_down_is_containerds() {
        let s = 1_000_000_000i64;
        let task = |id: &str| TaskRecord {
            id: id.into(),
            want_code: 33,
            oom: false,
            shim_killed: false,
            got: Some((255, "Unknown".into(), 60 * s)),
            problem: Some("wrong".into()),
        };
        let mut r = ChaosReport {
            tasks: vec![task("cut"), task("long-before")],
            downtimes: vec![Downtime {
                from_ns: 20 * s,
                to_ns: 21 * s,
            }],
            ..Default::default()
        };
        let mut seen = BTreeMap::new();
        seen.insert("cut".to_string(), vec![(Some(33), 20 * s - 34_000_000)]);
        seen.insert("long-before".to_string(), vec![(Some(33), 10 * s)]);
        excuse_exits_containerd_did_not_write_down(&mut r, &seen, &BTreeMap::new());
        assert!(r.tasks[0].problem.is_none());
        assert!(r.tasks[1].problem.is_some());
        assert_eq!(r.lost_at_shutdown.len(), 1);
    }

    /// The short run's 58f76332 (seed 1, a loaded machine): it exited 75,
    /// the shim told it and deleted it, and containerd was SIGKILLed 0.4 s
    /// later, before CRI wrote the exit down; started again, containerd
    /// found the task, asked the pod's shim, and its cleanup published a
    /// TaskExit 137. CRI says 255 (Unknown): containerd's, under any shim.
    #[test]
    fn an_exit_cut_off_by_containerds_kill_and_its_cleanups_137_are_containerds() {
        let s = 1_000_000_000i64;
        let mut r = ChaosReport {
            tasks: vec![TaskRecord {
                id: "58f76332".into(),
                want_code: 75,
                oom: false,
                shim_killed: false,
                got: Some((255, "Unknown".into(), 57 * s)),
                problem: Some("exit 255 (Unknown), the task exited 75".into()),
            }],
            downtimes: vec![Downtime {
                from_ns: 56 * s + 400_000_000,
                to_ns: 56 * s + 540_000_000,
            }],
            ..Default::default()
        };
        let mut seen = BTreeMap::new();
        seen.insert(
            "58f76332".to_string(),
            vec![(Some(75), 56 * s), (Some(137), 56 * s + 600_000_000)],
        );
        judge_exits(&mut r, &seen, &BTreeSet::new());
        assert!(r.duplicate_exits.is_empty(), "{:?}", r.duplicate_exits);
        assert_eq!(r.exits_republished_by_containerd.len(), 1);
        excuse_exits_containerd_did_not_write_down(&mut r, &seen, &BTreeMap::new());
        assert!(r.tasks[0].problem.is_none());
        assert_eq!(r.lost_at_shutdown.len(), 1);

        // A second TaskExit with no restart before it stays a duplicate.
        let mut r2 = ChaosReport {
            tasks: r.tasks.clone(),
            ..Default::default()
        };
        judge_exits(&mut r2, &seen, &BTreeSet::new());
        assert_eq!(r2.duplicate_exits.len(), 1, "{:?}", r2.duplicate_exits);
    }

    #[test]
    fn unknown_counts_only_beyond_the_downtime() {
        let s = 1_000_000_000i64;
        let call = |t: i64, ids: &[&str]| ListCall {
            start_ns: t * s,
            took: Duration::from_millis(1),
            unknown: Some(ids.iter().map(|i| i.to_string()).collect()),
        };
        let mut r = ChaosReport {
            downtimes: vec![Downtime {
                from_ns: 10 * s,
                to_ns: 14 * s,
            }],
            ..Default::default()
        };
        // a: UNKNOWN 9..15 s, 4 s of which containerd was down: 2 s beyond.
        // b: UNKNOWN 20..24 s with containerd up: too long.
        let lists = vec![
            call(9, &["a"]),
            call(15, &["a"]),
            call(16, &[]),
            call(20, &["b"]),
            call(24, &["b"]),
        ];
        judge_unknown(&mut r, &lists, &BTreeSet::new());
        assert_eq!(r.long_unknown.len(), 1, "{:?}", r.long_unknown);
        assert!(r.long_unknown[0].starts_with("b:"), "{:?}", r.long_unknown);
        assert_eq!(r.longest_unknown_beyond_downtime, Duration::from_secs(4));
    }

    #[test]
    fn a_container_whose_fifos_containerd_could_not_reopen_is_containerds() {
        let log = concat!(
            r#"time="2026-12-04T02:19:12.856976380Z" level=error msg="Failed to load container status for \"87de41\"" error="failed to load task: error creating fifo /x/io/2215788274/87de41-stdout: no such file or directory""#,
            "\n",
            r#"time="2026-12-04T02:19:13.0Z" level=error msg="Failed to load container status for \"other\"" error="failed to load task: context deadline exceeded""#,
            "\n",
            r#"time="2026-12-04T19:13:18.060120560Z" level=error msg="Failed to load container \"ad5afb\"" error="failed to checkpoint status to \"/x/containers/ad5afb/status\": write /x/.tmp-status1: no space left on device""#,
            "\n",
        );
        let lost = io_lost_by_containerd(log);
        assert_eq!(
            lost,
            BTreeSet::from(["87de41".to_string(), "ad5afb".to_string()])
        );
        let task = |id: &str| TaskRecord {
            id: id.into(),
            want_code: 112,
            oom: false,
            shim_killed: false,
            got: Some((137, "Error".into(), 1)),
            problem: Some("wrong".into()),
        };
        let s = 1_000_000_000i64;
        let call = |t: i64| ListCall {
            start_ns: t * s,
            took: Duration::from_millis(1),
            unknown: Some(vec!["87de41".into(), "other".into()]),
        };
        let mut r = ChaosReport {
            tasks: vec![task("87de41"), task("other")],
            ..Default::default()
        };
        excuse_io_lost_by_containerd(&mut r, &lost);
        judge_unknown(&mut r, &[call(1), call(10)], &lost);
        assert!(r.tasks[0].problem.is_none());
        assert!(r.tasks[1].problem.is_some());
        assert_eq!(r.io_lost_by_containerd.len(), 1);
        // Only the container not in `lost` is judged UNKNOWN for too long.
        assert_eq!(r.long_unknown.len(), 1, "{:?}", r.long_unknown);
        assert!(r.long_unknown[0].starts_with("other"));
    }

    #[test]
    fn a_killed_shims_task_cri_could_not_wait_for_is_containerds() {
        let log = concat!(
            r#"time="2026-12-04T18:37:32.444128468Z" level=error msg="failed to get task exit status for \"2284\"" error="ttrpc: closed: unknown""#,
            "\n",
        );
        let unwaited = exits_cri_could_not_wait_for(log);
        assert_eq!(unwaited, BTreeSet::from(["2284".to_string()]));
        let task = |id: &str, shim_killed: bool| TaskRecord {
            id: id.into(),
            want_code: 59,
            oom: false,
            shim_killed,
            got: Some((255, "Error".into(), 1)),
            problem: Some("wrong".into()),
        };
        let mut r = ChaosReport {
            // The same 255 under a live shim, or unlogged, stays a problem.
            tasks: vec![task("2284", true), task("2284", false), task("other", true)],
            ..Default::default()
        };
        excuse_exits_cri_could_not_wait_for(&mut r, &unwaited);
        assert!(r.tasks[0].problem.is_none());
        assert!(r.tasks[1].problem.is_some());
        assert!(r.tasks[2].problem.is_some());
        assert_eq!(r.exits_set_by_cri.len(), 1);
    }

    #[test]
    fn a_second_taskexit_from_containerds_cleanup_of_a_dead_shim_is_containerds() {
        let task = |id: &str, shim_killed| TaskRecord {
            id: id.into(),
            want_code: 50,
            oom: false,
            shim_killed,
            got: Some((50, "Error".into(), 1)),
            problem: None,
        };
        let mut r = ChaosReport {
            tasks: vec![
                task("killed", true),
                task("lost", false),
                task("live", false),
                task("killed-wrong", true),
            ],
            ..Default::default()
        };
        let seen = BTreeMap::from([
            ("killed".to_string(), vec![(Some(50), 1), (Some(137), 2)]),
            ("lost".to_string(), vec![(Some(50), 1), (Some(137), 2)]),
            // Under a live shim a second TaskExit is the shim's.
            ("live".to_string(), vec![(Some(50), 1), (Some(137), 2)]),
            // Not what the dead shim's cleanup sends.
            (
                "killed-wrong".to_string(),
                vec![(Some(50), 1), (Some(50), 2)],
            ),
        ]);
        judge_exits(&mut r, &seen, &BTreeSet::from(["lost".to_string()]));
        assert_eq!(r.exits_republished_by_containerd.len(), 2);
        assert_eq!(r.duplicate_exits.len(), 2, "{:?}", r.duplicate_exits);
        assert!(r.duplicate_exits[0].starts_with("live"));
    }

    #[test]
    fn the_shims_own_slow_updates_are_read_from_containerds_log() {
        let log = concat!(
            r#"time="2026-12-04T19:11:35.6Z" level=warning msg="slow task call" call=update id=27f6 took=412.5ms runtime=io.containerd.brisk.v2"#,
            "\n",
            r#"time="2026-12-04T19:11:35.7Z" level=warning msg="slow task call" call=delete id=27f6 took=3.1s runtime=io.containerd.brisk.v2"#,
            "\n",
        );
        assert_eq!(updates_slow_in_the_shim(log), vec!["27f6 took=412.5ms"]);
    }

    #[test]
    fn a_slow_list_is_the_shims_only_beside_a_slow_update() {
        let ms = 1_000_000i64;
        let list = |t: i64, took: u64| ListCall {
            start_ns: t * ms,
            took: Duration::from_millis(took),
            unknown: Some(vec![]),
        };
        let update = |t: i64, took: u64| TimedCall {
            start_ns: t * ms,
            took: Duration::from_millis(took),
        };
        let mut r = ChaosReport {
            handler: BRISK_HANDLER.into(),
            ..Default::default()
        };
        let lists = [list(0, 1), list(1000, 133), list(5000, 900), list(9000, 1)];
        // A fast Update beside the first slow list, a slow one beside the second.
        let updates = [update(1050, 40), update(5100, 800)];
        judge_lists(&mut r, &lists, &updates);
        assert_eq!(r.list_max, Duration::from_millis(900));
        assert_eq!(r.update_max_up, Duration::from_millis(800));
        assert_eq!(
            r.lists_slow_elsewhere.len(),
            1,
            "{:?}",
            r.lists_slow_elsewhere
        );
        assert_eq!(r.lists_waiting_on_a_shim.len(), 1);
        assert!(r
            .problems()
            .iter()
            .any(|p| p.contains("beside an Update of 800ms")));
    }

    #[test]
    fn a_bundle_delete_begun_during_containerds_shutdown_is_containerds() {
        let log = [
            r#"time="1" level=info msg="starting containerd" version="1.6.20""#,
            r#"time="2" level=warning msg="cleaning up after shim disconnected" id=early namespace=k8s.io"#,
            r#"time="3" level=info msg="Stop CRI service""#,
            r#"time="4" level=warning msg="cleaning up after shim disconnected" id=774187 namespace=k8s.io"#,
            r#"time="5" level=info msg="starting containerd" version="1.6.20""#,
            r#"time="6" level=warning msg="cleaning up after shim disconnected" id=late namespace=k8s.io"#,
        ]
        .join("\n");
        assert_eq!(
            deletes_cut_off_by_shutdown(&log),
            BTreeSet::from(["774187".to_string()])
        );
    }

    #[test]
    fn update_failures_are_counted_by_their_error() {
        let f = [
            "a1: CRI UpdateContainerResources: NotFound: failed to find container: not found",
            "b2: CRI UpdateContainerResources: Unknown: cannot update a stopped container",
            "c3: CRI UpdateContainerResources: NotFound: failed to find container: not found",
        ]
        .map(String::from);
        assert_eq!(
            failure_kinds(&f),
            vec![
                (
                    "CRI UpdateContainerResources: NotFound: failed to find container: not found"
                        .to_string(),
                    2
                ),
                (
                    "CRI UpdateContainerResources: Unknown: cannot update a stopped container"
                        .to_string(),
                    1
                ),
            ]
        );
    }
}
