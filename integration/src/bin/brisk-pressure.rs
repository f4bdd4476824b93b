//! brisk-pressure: an exiting container under real writeback pressure,
//! nothing injected. The stock runc shim against brisk, alternating, in one
//! run on one private containerd.
//!
//! Each round, for each handler: a fresh pod; strace attached to its shim
//! timing (not delaying) `umount2`; a background writer fills the page cache
//! of the filesystem holding containerd's root with gigabytes of dirty
//! pages and keeps it topped up; a container writes a few hundred MB into
//! its rootfs (`dd`, no fsync), sleeps 2 s and exits 0; meanwhile a
//! kubelet-like loop calls ListContainers back to back and
//! UpdateContainerResources every second. Measured:
//!
//! * exit (CRI finished_at) -> EXITED seen through ContainerStatus;
//! * the shim's unmount of the rootfs: from the first umount2 to the end of
//!   the last (strace), and for brisk also `took=` of its log line;
//! * ListContainers max latency before the exit and around it (from the
//!   exit to the end of the unmount or EXITED, whichever is later);
//! * Dirty+Writeback (/proc/meminfo) at the exit.
//!
//! The sysctls `vm.dirty_ratio`/`vm.dirty_background_ratio` are raised (to
//! 60/50 unless `--no-sysctl`) and restored at the end, on error, on panic,
//! and on SIGINT/SIGTERM; the writer's files are removed likewise.
//!
//! usage: brisk-pressure [--rounds 5] [--dirty-gb auto] [--container-mb 300]
//!        [--no-sysctl] [--no-updates] [--writer-dir DIR] [--budget-secs 540]
//!        [--handlers runc,brisk]
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use brisk_integration::cri::ContainerState;
use brisk_integration::pressure::{self, DirtyWriter, MemInfo, SysctlGuard};
use brisk_integration::report::{self, label, Handlers};
use brisk_integration::scenario::{self, human, quantile, ListCall, Strace};
use brisk_integration::{ContainerSpec, Containerd, BRISK_HANDLER};
use clap::Parser;

const GIB: f64 = (1u64 << 30) as f64;

/// An exiting container under real writeback pressure, the stock runc shim
/// against brisk in alternating rounds on one private containerd; prints
/// markdown tables of the rounds and a summary.
#[derive(Parser, Debug)]
#[command(name = "brisk-pressure")]
struct Args {
    /// Rounds; each runs one container per handler.
    #[arg(long, value_name = "N", default_value_t = 5)]
    rounds: usize,
    /// Dirty+Writeback to keep during a round, in GiB, or `auto`: min(35% of MemAvailable, 20% of free disk, 10 GiB).
    #[arg(long, value_name = "GB|auto", default_value_t = DirtyGb::Auto)]
    dirty_gb: DirtyGb,
    /// MB the container writes into its rootfs before it exits.
    #[arg(long, value_name = "N", default_value_t = 300)]
    container_mb: u64,
    /// Leave vm.dirty_ratio and vm.dirty_background_ratio alone (else 60/50 for the run).
    #[arg(long)]
    no_sysctl: bool,
    /// No UpdateContainerResources calls in the kubelet-like loop.
    #[arg(long)]
    no_updates: bool,
    /// Directory of the writer's files; on the filesystem of containerd's root (default: in the instance directory).
    #[arg(long, value_name = "DIR")]
    writer_dir: Option<PathBuf>,
    /// Start no round after this many seconds (the first always runs).
    #[arg(long, value_name = "N", default_value_t = 540)]
    budget_secs: u64,
    /// CRI handlers to compare, comma-separated, in table order.
    #[arg(long, value_name = "H,H", default_value_t = Handlers::stock_and_brisk())]
    handlers: Handlers,
}

/// `--dirty-gb`: `auto`, or a size in GiB.
#[derive(Debug, Clone, Copy, PartialEq)]
enum DirtyGb {
    Auto,
    Gib(f64),
}

impl std::str::FromStr for DirtyGb {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s == "auto" {
            return Ok(DirtyGb::Auto);
        }
        s.parse()
            .map(DirtyGb::Gib)
            .map_err(|e| format!("{e}: a size in GiB or `auto`"))
    }
}

impl std::fmt::Display for DirtyGb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DirtyGb::Auto => f.write_str("auto"),
            DirtyGb::Gib(g) => write!(f, "{g}"),
        }
    }
}

#[derive(Debug, Clone, Default)]
struct Round {
    round: usize,
    handler: String,
    /// Dirty+Writeback when the container exited (bytes).
    unwritten_at_exit: u64,
    unwritten_max: u64,
    fill: Duration,
    /// Container start -> exit as CRI saw it.
    ran: Duration,
    exited_after: Option<Duration>,
    exit_code: i32,
    unmount_strace: Option<Duration>,
    umount2_calls: usize,
    unmount_log: Option<Duration>,
    list_before: Option<Duration>,
    list_exit: Option<Duration>,
    list_calls: usize,
    updates: usize,
    update_failures: Vec<String>,
    cleanup: Duration,
    error: Option<String>,
    /// The shim's sockets still on disk 5 s after the pod was removed.
    sockets_left: Vec<PathBuf>,
}

fn check_interrupt() -> Result<()> {
    if pressure::interrupted() {
        bail!("interrupted");
    }
    Ok(())
}

struct Setup<'a> {
    cd: &'a Containerd,
    writer_dir: PathBuf,
    target: u64,
    max_file: u64,
    container_mb: u64,
    updates: bool,
}

/// Sets the flag when dropped.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

fn one_round(s: &Setup, handler: &str, round: usize) -> Result<Round> {
    let cd = s.cd;
    let cri = cd.cri();
    let mut r = Round {
        round,
        handler: handler.to_string(),
        ..Default::default()
    };
    let log_from = scenario::file_len(&cd.log_path);
    let before = scenario::handler_shims(cd, handler);
    let pod = cri.run_pod_sandbox(handler, &format!("pressure-{handler}-{round}"))?;
    let shim = scenario::shim_of_pod(cd, handler, &pod.id, &before)?;
    let shim_sockets: Vec<PathBuf> = brisk_integration::sys::unix_sockets_of(shim)
        .into_iter()
        .filter(|p| p.starts_with("/run/containerd/s"))
        .collect();
    let strace = Strace::attach(
        shim,
        &cd.dir.join(format!("strace-{handler}-{round}.txt")),
        None,
    )?;

    let stop = AtomicBool::new(false);
    let exited = AtomicBool::new(false);
    let samples: Mutex<Vec<(i64, u64)>> = Mutex::new(Vec::new());
    let container: Mutex<Option<String>> = Mutex::new(None);

    let result = std::thread::scope(|sc| -> Result<()> {
        // However this closure returns, the threads must stop: the scope
        // joins them.
        let _stop_all = StopOnDrop(&stop);
        // /proc/meminfo every 100 ms.
        let sampler = sc.spawn(|| {
            while !stop.load(Ordering::SeqCst) {
                let m = MemInfo::read();
                samples
                    .lock()
                    .unwrap()
                    .push((scenario::now_ns(), m.unwritten()));
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let mut writer = DirtyWriter::start(&s.writer_dir, s.target, s.max_file, 1 << 30)?;
        let t = Instant::now();
        let deadline = t + Duration::from_secs(90);
        loop {
            check_interrupt()?;
            let m = MemInfo::read();
            if writer.filled() && (m.unwritten() as f64) >= 0.85 * s.target as f64 {
                break;
            }
            if writer.filled() && t.elapsed() > Duration::from_secs(20) {
                eprintln!(
                    "  dirty set stays at {:.2} GiB (target {:.2} GiB): the kernel writes back sooner",
                    m.unwritten() as f64 / GIB,
                    s.target as f64 / GIB
                );
                break;
            }
            if Instant::now() > deadline {
                bail!("the writer did not fill {} bytes in 90 s", s.target);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        r.fill = t.elapsed();

        let lister = sc.spawn(|| scenario::list_loop(cri, &stop));
        let spec = ContainerSpec::sh(
            "writer",
            &format!(
                "dd if=/dev/zero of=/big bs=1M count={} 2>/dev/null; sleep 2; exit 0",
                s.container_mb
            ),
        );
        let created_ns = scenario::now_ns();
        let id = cri.run_container(&pod, &spec)?;
        *container.lock().unwrap() = Some(id.clone());
        let updater = s.updates.then(|| {
            let (id, stop, exited) = (id.clone(), &stop, &exited);
            sc.spawn(move || scenario::update_loop(cri, &id, stop, exited))
        });

        // Returns (finished_at, end of the unmount or EXITED seen), in ns.
        let wait = (|| -> Result<(i64, i64)> {
            let deadline = Instant::now() + Duration::from_secs(240);
            let st = loop {
                check_interrupt()?;
                let st = cri.container_status(&id)?;
                if st.state == ContainerState::ContainerExited as i32 {
                    break st;
                }
                if Instant::now() > deadline {
                    bail!(
                        "container not EXITED 240 s after start: {:?}",
                        ContainerState::try_from(st.state)
                    );
                }
                std::thread::sleep(Duration::from_millis(10));
            };
            let seen = scenario::now_ns();
            exited.store(true, Ordering::SeqCst);
            r.exited_after = Some(Duration::from_nanos((seen - st.finished_at).max(0) as u64));
            r.exit_code = st.exit_code;
            r.ran = Duration::from_nanos((st.finished_at - st.started_at).max(0) as u64);
            // The unmount: strace for both, the log line for brisk.
            let mut end_ns = seen;
            match strace.wait_unmount(&id, Duration::from_secs(120)) {
                Some(sp) => {
                    r.unmount_strace = Some(Duration::from_secs_f64(sp.secs()));
                    r.umount2_calls = sp.calls;
                    end_ns = end_ns.max((sp.end * 1e9) as i64);
                }
                None => eprintln!("  strace saw no complete unmount of {id} in 120 s"),
            }
            if handler == BRISK_HANDLER {
                let t = Instant::now();
                while t.elapsed() < Duration::from_secs(30) {
                    if let Some(l) = scenario::find_unmount_log(&cd.log_path, log_from, &id) {
                        r.unmount_log = Some(l.took);
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            // Keep listing a little past the end.
            std::thread::sleep(Duration::from_secs(1));
            Ok((st.finished_at, end_ns))
        })();
        stop.store(true, Ordering::SeqCst);
        let calls = lister.join().unwrap();
        if let Some(u) = updater {
            let u = u.join().unwrap();
            r.updates = u.calls;
            r.update_failures = u.failures;
        }
        sampler.join().unwrap();
        if let Err(e) = writer.stop() {
            eprintln!("  writer: {e:#}");
        }
        let (finished, end) = wait?;
        {
            let samples = samples.lock().unwrap();
            r.unwritten_max = samples.iter().map(|s| s.1).max().unwrap_or(0);
            r.unwritten_at_exit = samples
                .iter()
                .rfind(|(t, _)| *t <= finished)
                .map(|(_, v)| *v)
                .unwrap_or(0);
        }
        r.list_calls = calls.len();
        let before: Vec<ListCall> = calls
            .iter()
            .copied()
            .filter(|c| c.end_ns() < finished)
            .collect();
        r.list_before = scenario::list_max_between(&before, created_ns, finished);
        r.list_exit = scenario::list_max_between(&calls, finished, end);
        Ok(())
    });
    drop(strace);
    // Clean up the round: container, pod, dirty pages left.
    let t = Instant::now();
    if let Some(id) = container.lock().unwrap().take() {
        if let Err(e) = cri.remove_container(&id) {
            eprintln!("  remove container: {e:#}");
        }
    }
    cri.stop_pod(&pod.id)?;
    cri.remove_pod(&pod.id)?;
    let _ = pressure::syncfs(&s.writer_dir);
    pressure::wait_unwritten_below(256 << 20, Duration::from_secs(20));
    r.cleanup = t.elapsed();
    let t = Instant::now();
    loop {
        r.sockets_left = shim_sockets
            .iter()
            .filter(|p| p.exists())
            .cloned()
            .collect();
        if r.sockets_left.is_empty() || t.elapsed() > Duration::from_secs(5) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for p in &r.sockets_left {
        eprintln!(
            "  the {handler} shim (pid {shim}, alive: {}) left its socket {} after the pod was removed",
            brisk_integration::sys::pid_alive(shim),
            p.display()
        );
    }
    for l in scenario::shim_problems(&cd.log_path, log_from) {
        eprintln!("  brisk shim log: {l}");
    }
    if let Err(e) = result {
        r.error = Some(format!("{e:#}"));
    }
    Ok(r)
}

fn secs(d: Option<Duration>) -> String {
    d.map(|d| format!("{:.2}", d.as_secs_f64()))
        .unwrap_or_else(|| "-".into())
}

fn ms(d: Option<Duration>) -> String {
    d.map(|d| format!("{:.0}", d.as_secs_f64() * 1000.0))
        .unwrap_or_else(|| "-".into())
}

/// The columns of the rounds table.
const ROUND_COLUMNS: [&str; 11] = [
    "round",
    "handler",
    "dirty+writeback at exit (GiB)",
    "exit→EXITED (s)",
    "shim unmount, strace (s)",
    "umount2 calls",
    "brisk log took= (s)",
    "ListContainers max before exit (ms)",
    "ListContainers max around exit (ms)",
    "updates (failed)",
    "exit code",
];

impl Round {
    /// The figures of the round as the progress line and the rounds table
    /// show them, in the table's order: dirty+writeback at the exit (GiB),
    /// exit→EXITED (s), the unmount by strace (s), umount2 calls, brisk's
    /// took= (s), ListContainers max before and around the exit (ms).
    fn figures(&self) -> [String; 7] {
        [
            format!("{:.2}", self.unwritten_at_exit as f64 / GIB),
            secs(self.exited_after),
            secs(self.unmount_strace),
            self.umount2_calls.to_string(),
            secs(self.unmount_log),
            ms(self.list_before),
            ms(self.list_exit),
        ]
    }

    /// The round's row of the rounds table.
    fn table_row(&self) -> String {
        let mut cells = vec![self.round.to_string(), label(&self.handler).to_string()];
        cells.extend(self.figures());
        cells.push(format!("{} ({})", self.updates, self.update_failures.len()));
        let error = if self.error.is_some() { " (error)" } else { "" };
        cells.push(format!("{}{error}", self.exit_code));
        report::row(cells)
    }
}

/// The rounds of `handler` that went through.
fn ok_rounds<'a>(rounds: &'a [Round], handler: &'a str) -> impl Iterator<Item = &'a Round> {
    rounds
        .iter()
        .filter(move |r| r.handler == handler && r.error.is_none())
}

fn run(args: &Args) -> Result<()> {
    let started = Instant::now();
    let budget = Duration::from_secs(args.budget_secs);
    report::require_shim_built(args.handlers.iter().map(String::as_str))?;
    let cd = Containerd::start().context("start private containerd")?;
    let root = cd.dir.join("root");
    let (mnt, fstype, source, root_dev) = pressure::filesystem_of(&root)?;
    let writer_dir = args
        .writer_dir
        .clone()
        .unwrap_or_else(|| cd.dir.join("pressure"));
    std::fs::create_dir_all(&writer_dir)?;
    let (_, _, _, writer_dev) = pressure::filesystem_of(&writer_dir)?;
    if writer_dev != root_dev {
        pressure::remove_writer_files(&writer_dir).ok();
        bail!(
            "{} is not on the filesystem of containerd's root {}",
            writer_dir.display(),
            root.display()
        );
    }
    if fstype == "tmpfs" {
        eprintln!("warning: containerd's root is on tmpfs: there is no writeback to wait for");
    }
    let mem = MemInfo::read();
    let free = pressure::free_disk(&root)?;
    let target = match args.dirty_gb {
        DirtyGb::Gib(g) => (g * GIB) as u64,
        DirtyGb::Auto => {
            let t = (0.35 * mem.available as f64).min(0.2 * free as f64);
            (t.min(10.0 * GIB)) as u64
        }
    };
    let max_file = ((2 * target) as f64).min(0.3 * free as f64) as u64;
    if max_file < target {
        bail!(
            "not enough free disk for a {:.1} GiB dirty set ({:.1} GiB free)",
            target as f64 / GIB,
            free as f64 / GIB
        );
    }
    let v = cd.cri().version()?;
    println!(
        "containerd {}; root {} on {} ({fstype}, {source}); writer files in {}",
        v.runtime_version,
        root.display(),
        mnt.display(),
        writer_dir.display()
    );
    println!(
        "memory {:.1} GiB, available {:.1} GiB; disk free {:.1} GiB; dirty target {:.2} GiB, writer file at most {:.1} GiB",
        mem.total as f64 / GIB,
        mem.available as f64 / GIB,
        free as f64 / GIB,
        target as f64 / GIB,
        max_file as f64 / GIB
    );
    let mut guard = if !args.no_sysctl {
        Some(SysctlGuard::raise(60, 50)?)
    } else {
        None
    };
    println!("sysctls now: {}", pressure::dirty_sysctls());

    let setup = Setup {
        cd: &cd,
        writer_dir: writer_dir.clone(),
        target,
        max_file,
        container_mb: args.container_mb,
        updates: !args.no_updates,
    };
    let mut rounds: Vec<Round> = Vec::new();
    'outer: for round in 1..=args.rounds {
        let mut order: Vec<&String> = args.handlers.iter().collect();
        if round % 2 == 0 {
            order.reverse();
        }
        for h in order {
            if pressure::interrupted() {
                eprintln!("interrupted: stopping");
                break 'outer;
            }
            if round > 1 && started.elapsed() > budget {
                eprintln!(
                    "time budget of {:?} spent: stopping after {} rounds",
                    budget,
                    round - 1
                );
                break 'outer;
            }
            eprintln!("round {round}: {} ...", label(h));
            let r = one_round(&setup, h, round)?;
            let [dirty, exited, unmount, calls, took, before, around] = r.figures();
            eprintln!(
                "  dirty at exit {dirty} GiB (max {:.2}), fill {:.1} s, exit->EXITED {exited} s, unmount {unmount} s (strace, {calls} calls) / {took} s (log), ListContainers max {before} ms before / {around} ms around the exit, updates {} ({} failed), cleanup {:.1} s{}",
                r.unwritten_max as f64 / GIB,
                r.fill.as_secs_f64(),
                r.updates,
                r.update_failures.len(),
                r.cleanup.as_secs_f64(),
                r.error
                    .as_ref()
                    .map(|e| format!(", ERROR: {e}"))
                    .unwrap_or_default()
            );
            for f in r.update_failures.iter().take(2) {
                eprintln!("  update failure: {f}");
            }
            rounds.push(r);
        }
    }
    // Restore before the teardown: nothing else needs the pressure.
    if let Some(g) = guard.as_mut() {
        g.restore();
    }
    drop(guard);
    pressure::remove_writer_files(&writer_dir)?;
    let leaks = cd.wait_no_leaks(Duration::from_secs(30));
    let finished = cd.finish_checked();
    println!("sysctls restored: {}", pressure::dirty_sysctls());

    println!("\n### Rounds\n");
    println!("{}", report::row(ROUND_COLUMNS));
    println!("{}", report::separator("rlrrrrrrrrr"));
    for r in &rounds {
        println!("{}", r.table_row());
    }
    if let [a, b] = &args.handlers[..] {
        let med = |h: &str, f: fn(&Round) -> Option<Duration>| {
            let v: Vec<f64> = ok_rounds(&rounds, h)
                .filter_map(|r| f(r).map(|d| d.as_secs_f64()))
                .collect();
            (
                quantile(&v, 0.5),
                v.iter().copied().fold(f64::NAN, f64::max),
            )
        };
        println!(
            "\n### Summary (median of {} / {} rounds; max in brackets)\n",
            ok_rounds(&rounds, a).count(),
            ok_rounds(&rounds, b).count()
        );
        let [header, separator] = report::comparison_header("metric", &args.handlers);
        println!("{header}\n{separator}");
        type Metric = (&'static str, fn(&Round) -> Option<Duration>);
        let metrics: [Metric; 4] = [
            ("exit → EXITED", |r| r.exited_after),
            ("shim rootfs unmount (strace umount2 span)", |r| {
                r.unmount_strace
            }),
            ("ListContainers max, around the exit", |r| r.list_exit),
            ("ListContainers max, before the exit", |r| r.list_before),
        ];
        for (name, f) in metrics {
            let (ma, xa) = med(a, f);
            let (mb, xb) = med(b, f);
            let show = |m: f64, x: f64| {
                if m.is_finite() {
                    format!(
                        "{} ({})",
                        human(Duration::from_secs_f64(m)),
                        human(Duration::from_secs_f64(x))
                    )
                } else {
                    "-".into()
                }
            };
            println!(
                "{}",
                report::row([
                    name,
                    &show(ma, xa),
                    &show(mb, xb),
                    &report::ratio(ma, mb, 3)
                ])
            );
        }
        let dirty: Vec<f64> = rounds
            .iter()
            .map(|r| r.unwritten_at_exit as f64 / GIB)
            .collect();
        println!(
            "\ndirty+writeback at the exit: median {:.2} GiB, range {:.2}-{:.2} GiB; total run {:.0} s",
            quantile(&dirty, 0.5),
            dirty.iter().copied().fold(f64::INFINITY, f64::min),
            dirty.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            started.elapsed().as_secs_f64()
        );
    }
    for r in rounds.iter().filter(|r| !r.sockets_left.is_empty()) {
        eprintln!(
            "round {} {}: shim socket left after the pod was removed: {:?}",
            r.round, r.handler, r.sockets_left
        );
    }
    leaks?;
    finished?;
    let errors: Vec<&Round> = rounds.iter().filter(|r| r.error.is_some()).collect();
    if !errors.is_empty() {
        for r in &errors {
            eprintln!(
                "round {} {}: {}",
                r.round,
                r.handler,
                r.error.as_deref().unwrap_or("")
            );
        }
        bail!("{} rounds failed", errors.len());
    }
    if pressure::interrupted() {
        bail!("interrupted");
    }
    Ok(())
}

fn main() {
    let args = Args::parse();
    if !brisk_integration::integration_enabled() {
        std::process::exit(1);
    }
    pressure::install_cleanup_hooks();
    let r = run(&args);
    // Whatever happened: sysctls back, writer files gone.
    pressure::run_cleanup();
    if let Err(e) = r {
        eprintln!("brisk-pressure: {e:#}");
        std::process::exit(1);
    }
}
