//! The soak: many short tasks across pods at once, with a kubelet-like loop
//! and injected umount delays on some shims, then a full leak check. Shared
//! by the `brisk-soak` benchmark command and a short variant in the tests.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::Result;

use crate::{
    cri::{ContainerSpec, LinuxContainerResources},
    scenario::{self, quantile, ListCall, Strace},
    sys, Containerd, Options, BRISK_HANDLER,
};

#[derive(Debug, Clone)]
pub struct SoakParams {
    pub pods: usize,
    pub tasks_per_pod: usize,
    /// Shims (of the first pods) whose umount2 is delayed.
    pub delayed_shims: usize,
    pub delay: Duration,
    pub handler: String,
    /// How long each task runs before it exits.
    pub task_runs: Duration,
}

impl Default for SoakParams {
    fn default() -> Self {
        SoakParams {
            pods: 10,
            tasks_per_pod: 100,
            delayed_shims: 2,
            delay: Duration::from_secs(3),
            handler: BRISK_HANDLER.into(),
            task_runs: Duration::from_secs(1),
        }
    }
}

/// One sample of the shims' footprint.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub at: Duration,
    pub rss_kib_total: u64,
    pub rss_kib_max: u64,
    /// Anonymous memory (heap, stacks) of all shims.
    pub anon_kib_total: u64,
    pub fds_total: usize,
}

#[derive(Debug, Default)]
pub struct SoakReport {
    pub tasks_done: usize,
    pub task_errors: Vec<String>,
    pub update_calls: usize,
    /// Updates that failed with an answer from the shim, or any other error
    /// than the one below.
    pub update_failures: Vec<String>,
    /// Updates that failed with "ttrpc: closed": containerd sent them on its
    /// connection for a task that its own exit handling had just deleted and
    /// closed, so they never got to the shim (a race inside containerd).
    pub update_closed: Vec<String>,
    pub list_calls: usize,
    pub list_p50: Duration,
    pub list_p99: Duration,
    pub list_max: Duration,
    /// What overlapped the longest ListContainers call, to tell a stall the
    /// shim caused from one inside containerd or the machine.
    pub list_max_context: String,
    /// Half the injected unmount delay. A list that waited on a delayed
    /// unmount (the hazard) waits for the rest of it, most of the delay, since
    /// Updates come every second. Shorter stalls come from elsewhere: strace
    /// stops the traced shim and its runc children at every system call, so
    /// an Update on that pod takes 150 ms here and up to a second on a cold
    /// machine, and CRI holds the container's status lock through it.
    pub stall_bound: Duration,
    /// umount2 calls that strace delayed, each of them (runc's included).
    pub delayed_umounts: usize,
    pub samples: Vec<Sample>,
    pub leaks: Vec<String>,
    pub zombies: Vec<String>,
    pub elapsed: Duration,
}

fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Zombie processes whose parent is one of `parents`.
pub fn zombies_of(parents: &BTreeSet<i32>) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let after = &stat[stat.rfind(')')? + 2..];
            let mut f = after.split_whitespace();
            let (state, ppid) = (f.next()?, f.next()?.parse::<i32>().ok()?);
            (state == "Z" && parents.contains(&ppid)).then(|| format!("zombie {pid} of {ppid}"))
        })
        .collect()
}

/// Runs the soak and tears everything down; the report says what leaked.
pub fn run(p: &SoakParams) -> Result<SoakReport> {
    let cd = Containerd::start_with(Options::default())?;
    let started = Instant::now();
    let report = run_on(&cd, p, started);
    let mut report = report?;
    report
        .leaks
        .extend(cd.finish_checked().err().map(|e| format!("{e:#}")));
    report.elapsed = started.elapsed();
    Ok(report)
}

fn run_on(cd: &Containerd, p: &SoakParams, started: Instant) -> Result<SoakReport> {
    let cri = cd.cri();
    let mut pods = Vec::new();
    let mut shims = Vec::new();
    for i in 0..p.pods {
        let before = scenario::handler_shims(cd, &p.handler);
        let pod = cri.run_pod_sandbox(&p.handler, &format!("soak-{i}"))?;
        shims.push(scenario::shim_of_pod(cd, &p.handler, &pod.id, &before)?);
        pods.push(pod);
    }
    // Pods whose shim's unmounts are delayed, to tell their Updates apart.
    let delayed_pods: BTreeSet<String> = pods
        .iter()
        .take(p.delayed_shims)
        .map(|pod| pod.id.clone())
        .collect();
    let trace_dir = tempdir_for(cd);
    let mut straces = Vec::new();
    for (i, pid) in shims.iter().take(p.delayed_shims).enumerate() {
        let out = trace_dir.join(format!("soak-strace-{i}.log"));
        straces.push(Strace::attach(*pid, &out, Some(p.delay))?);
    }

    let stop = AtomicBool::new(false);
    // Running containers, each with whether its pod's unmounts are delayed.
    let running: Mutex<BTreeMap<String, bool>> = Mutex::new(BTreeMap::new());
    let done = AtomicUsize::new(0);
    let errors = Mutex::new(Vec::new());
    let mut report = SoakReport {
        stall_bound: p.delay / 2,
        ..Default::default()
    };

    // Each task's script: run for `task_runs`, then exit with its code.
    let sleep = if p.task_runs.is_zero() {
        String::new()
    } else {
        format!("sleep {}; ", p.task_runs.as_secs_f64())
    };
    let sleep = sleep.as_str();
    std::thread::scope(|s| {
        let lister = s.spawn(|| scenario::list_loop(cri, &stop));
        let updater = s.spawn(|| {
            let (mut calls, mut failures, mut closed) = (0, Vec::new(), Vec::new());
            let mut timed = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let t = Instant::now();
                let ids: Vec<(String, bool)> = running
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|(id, d)| (id.clone(), *d))
                    .collect();
                for (id, delayed) in ids {
                    let r = LinuxContainerResources {
                        cpu_shares: 512 + (calls % 2) as i64,
                        ..Default::default()
                    };
                    // A container may finish between the snapshot and the
                    // call; kubelet would not update it once it saw it exit.
                    let start_ns = scenario::now_ns();
                    let took = Instant::now();
                    let res = cri.update_container_resources(&id, r);
                    timed.push(UpdateCall {
                        start_ns,
                        took: took.elapsed(),
                        delayed,
                    });
                    if let Err(e) = res {
                        if running.lock().unwrap().contains_key(&id) {
                            let e = format!("{id}: {e:#}");
                            if e.contains("ttrpc: closed") {
                                closed.push(e);
                            } else {
                                failures.push(e);
                            }
                        }
                    }
                    calls += 1;
                }
                std::thread::sleep(Duration::from_secs(1).saturating_sub(t.elapsed()));
            }
            (calls, failures, closed, timed)
        });
        let sampler = s.spawn(|| {
            let mut samples = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let rss: Vec<u64> = shims
                    .iter()
                    .map(|&pid| sys::vm_rss_kib(pid).unwrap_or(0))
                    .collect();
                samples.push(Sample {
                    at: started.elapsed(),
                    rss_kib_total: rss.iter().sum(),
                    rss_kib_max: rss.iter().copied().max().unwrap_or(0),
                    anon_kib_total: shims
                        .iter()
                        .map(|&pid| sys::rss_anon_kib(pid).unwrap_or(0))
                        .sum(),
                    fds_total: shims.iter().map(|&pid| fd_count(pid)).sum(),
                });
                for _ in 0..20 {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            samples
        });
        let workers: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(pi, pod)| {
                let (running, done, errors) = (&running, &done, &errors);
                let delayed = delayed_pods.contains(&pod.id);
                s.spawn(move || {
                    for t in 0..p.tasks_per_pod {
                        let code = (t % 4) as i32;
                        let spec =
                            ContainerSpec::sh(&format!("t{t}"), &format!("{sleep}exit {code}"));
                        let r = (|| -> Result<()> {
                            let id = cri.run_container(pod, &spec)?;
                            running.lock().unwrap().insert(id.clone(), delayed);
                            let st = cri.wait_for_exited(&id, Duration::from_secs(60));
                            running.lock().unwrap().remove(&id);
                            let st = st?;
                            anyhow::ensure!(
                                st.exit_code == code,
                                "pod {pi} task {t}: exit {} != {code}",
                                st.exit_code
                            );
                            cri.remove_container(&id)?;
                            Ok(())
                        })();
                        match r {
                            Ok(()) => drop(done.fetch_add(1, Ordering::SeqCst)),
                            Err(e) => errors.lock().unwrap().push(format!("{e:#}")),
                        }
                    }
                })
            })
            .collect();
        for w in workers {
            let _ = w.join();
        }
        stop.store(true, Ordering::SeqCst);
        let lists = lister.join().unwrap();
        let (update_calls, update_failures, update_closed, timed) = updater.join().unwrap();
        report.samples = sampler.join().unwrap();
        let ms: Vec<f64> = lists.iter().map(|c| c.took.as_secs_f64()).collect();
        report.list_calls = lists.len();
        report.list_p50 = Duration::from_secs_f64(quantile(&ms, 0.5).max(0.0));
        report.list_p99 = Duration::from_secs_f64(quantile(&ms, 0.99).max(0.0));
        report.list_max = lists.iter().map(|c| c.took).max().unwrap_or_default();
        let umounts: Vec<_> = straces.iter().flat_map(|s| s.calls()).collect();
        report.delayed_umounts = umounts.len();
        if let Some(worst) = lists.iter().max_by_key(|c| c.took) {
            report.list_max_context = overlapping(worst, &timed, &umounts, started);
        }
        report.update_calls = update_calls;
        report.update_failures = update_failures;
        report.update_closed = update_closed;
    });
    drop(straces);
    report.tasks_done = done.load(Ordering::SeqCst);
    report.task_errors = errors.into_inner().unwrap();
    let parents: BTreeSet<i32> = shims.iter().copied().collect();
    report.zombies = zombies_of(&parents);
    for pod in &pods {
        cri.stop_pod(&pod.id)?;
        cri.remove_pod(&pod.id)?;
    }
    if let Err(e) = cd.wait_no_leaks(Duration::from_secs(60)) {
        report.leaks.push(format!("{e:#}"));
    }
    Ok(report)
}

/// One UpdateContainerResources call of the kubelet-like loop.
struct UpdateCall {
    start_ns: i64,
    took: Duration,
    /// On a container of a pod whose shim's unmounts are delayed.
    delayed: bool,
}

/// The Updates and delayed unmounts in progress during `list`, in words.
fn overlapping(
    list: &ListCall,
    updates: &[UpdateCall],
    umounts: &[scenario::Umount2Call],
    started: Instant,
) -> String {
    let (from, to) = (list.start_ns, list.end_ns());
    let run_start = scenario::now_ns() - started.elapsed().as_nanos() as i64;
    let secs = |ns: i64| (ns - run_start) as f64 / 1e9;
    let mut s = format!(
        "at +{:.1} s for {:?}; Updates in flight:",
        secs(from),
        list.took
    );
    for u in updates
        .iter()
        .filter(|u| u.start_ns <= to && u.start_ns + u.took.as_nanos() as i64 >= from)
    {
        let pod = if u.delayed {
            "delayed pod"
        } else {
            "other pod"
        };
        s.push_str(&format!(" [+{:.1} s {:?} {pod}]", secs(u.start_ns), u.took));
    }
    s.push_str("; delayed umount2 in progress:");
    for c in umounts.iter().filter(|c| {
        let (a, b) = ((c.start * 1e9) as i64, c.end().map(|e| (e * 1e9) as i64));
        a <= to && b.unwrap_or(i64::MAX) >= from
    }) {
        s.push_str(&format!(
            " [+{:.1} s {:?} s]",
            secs((c.start * 1e9) as i64),
            c.secs
        ));
    }
    s
}

fn tempdir_for(cd: &Containerd) -> std::path::PathBuf {
    let d = cd.dir.join("soak");
    let _ = std::fs::create_dir_all(&d);
    d
}

impl SoakReport {
    /// The soak's criteria: every task right, no leak or zombie, every
    /// Update the shim answered right, ListContainers p99 under 50 ms and no
    /// ListContainers call as long as [`SoakReport::stall_bound`]. Updates
    /// lost inside containerd are reported, not held against the shim.
    pub fn passed(&self) -> bool {
        self.task_errors.is_empty()
            && self.update_failures.is_empty()
            && self.leaks.is_empty()
            && self.zombies.is_empty()
            && self.list_p99 < Duration::from_millis(50)
            && self.list_max < self.stall_bound
    }

    /// A short text report, with the footprint curve.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let first = self.samples.first();
        let last = self.samples.last();
        s.push_str(&format!(
            "tasks done {} (errors {}), elapsed {:.0} s\n",
            self.tasks_done,
            self.task_errors.len(),
            self.elapsed.as_secs_f64()
        ));
        s.push_str(&format!(
            "UpdateContainerResources: {} calls, {} failures, {} lost in containerd on a closed task connection\n",
            self.update_calls,
            self.update_failures.len(),
            self.update_closed.len()
        ));
        s.push_str(&format!(
            "ListContainers: {} calls, p50 {:?}, p99 {:?}, max {:?}\n",
            self.list_calls, self.list_p50, self.list_p99, self.list_max
        ));
        s.push_str(&format!(
            "longest ListContainers {} (bound {:?}); umount2 calls delayed: {}\n",
            self.list_max_context, self.stall_bound, self.delayed_umounts
        ));
        if let (Some(a), Some(b)) = (first, last) {
            s.push_str(&format!(
                "shim RSS total {} -> {} KiB (max per shim {} -> {} KiB; anonymous {} -> {} KiB); fds {} -> {}\n",
                a.rss_kib_total,
                b.rss_kib_total,
                a.rss_kib_max,
                b.rss_kib_max,
                a.anon_kib_total,
                b.anon_kib_total,
                a.fds_total,
                b.fds_total
            ));
        }
        s.push_str("curve (s, RSS KiB total, anonymous KiB total, fds total):");
        let step = (self.samples.len() / 12).max(1);
        for x in self.samples.iter().step_by(step) {
            s.push_str(&format!(
                " ({:.0}, {}, {}, {})",
                x.at.as_secs_f64(),
                x.rss_kib_total,
                x.anon_kib_total,
                x.fds_total
            ));
        }
        s.push('\n');
        s.push_str(&format!(
            "leaks: {:?}\nzombies: {:?}\n",
            self.leaks, self.zombies
        ));
        for e in self
            .task_errors
            .iter()
            .chain(&self.update_failures)
            .chain(&self.update_closed)
            .take(10)
        {
            s.push_str(&format!("error: {e}\n"));
        }
        s
    }
}
