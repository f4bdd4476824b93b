//! brisk-density: a node full of pods, stock shim against brisk, in one run
//! on one private containerd.
//!
//! For each handler in turn: start `--pods` pods (kubelet's default maximum
//! is 110) of one `sleep` container each, `--parallel` at a time, and time
//! it; sum the RSS and PSS of the shims and read containerd's own RSS; then
//! leave the pods idle for `--idle-secs` and count what the shims did
//! meanwhile: CPU time (utime + stime of every thread) and context
//! switches (voluntary and not, every thread). An idle brisk shim should not
//! wake at all. The machine's load average is printed with the figures.
//!
//! usage: brisk-density [--pods 110] [--parallel 10] [--idle-secs 60] [--handlers runc,brisk]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use brisk_integration::report::{self, Handlers};
use brisk_integration::scenario::handler_shims;
use brisk_integration::{sys, ContainerSpec, Containerd, Pod};
use clap::Parser;

/// A node full of idle pods: shim memory, start time, idle wake-ups.
#[derive(Parser, Debug)]
#[command(name = "brisk-density")]
struct Args {
    /// Pods per handler, one `sleep` container each.
    #[arg(long, value_name = "N", default_value_t = 110)]
    pods: usize,
    /// Pods started at the same time.
    #[arg(long, value_name = "N", default_value_t = 10)]
    parallel: usize,
    /// How long the pods stay idle while the shims' activity is counted.
    #[arg(long, value_name = "S", default_value_t = 60)]
    idle_secs: u64,
    /// CRI handlers to measure, comma-separated, in table order.
    #[arg(long, value_name = "H,H", default_value_t = Handlers::stock_and_brisk())]
    handlers: Handlers,
}

/// What was measured of one handler.
#[derive(Default, Clone)]
struct Density {
    shims: usize,
    start_secs: f64,
    rss_kib: u64,
    pss_kib: u64,
    containerd_rss_kib: u64,
    idle_cpu_ms: f64,
    idle_voluntary: u64,
    idle_involuntary: u64,
    idle_secs: f64,
    load: String,
}

/// CPU time and context switches of a process, summed over its threads.
#[derive(Default, Clone, Copy)]
struct Activity {
    cpu_ticks: u64,
    voluntary: u64,
    involuntary: u64,
}

fn activity(pid: i32) -> Activity {
    let mut a = Activity::default();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return a;
    };
    for t in tasks.flatten() {
        let dir = t.path();
        if let Ok(stat) = std::fs::read_to_string(dir.join("stat")) {
            // Fields after the parenthesised comm: state is field 3, utime 14, stime 15.
            if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) {
                let f: Vec<&str> = rest.split_whitespace().collect();
                let tick = |i: usize| {
                    f.get(i - 3)
                        .and_then(|v| v.parse::<u64>().ok())
                        .unwrap_or(0)
                };
                a.cpu_ticks += tick(14) + tick(15);
            }
        }
        if let Ok(status) = std::fs::read_to_string(dir.join("status")) {
            for line in status.lines() {
                let num = |l: &str| {
                    l.split_whitespace()
                        .nth(1)
                        .and_then(|v| v.parse::<u64>().ok())
                };
                if line.starts_with("voluntary_ctxt_switches:") {
                    a.voluntary += num(line).unwrap_or(0);
                } else if line.starts_with("nonvoluntary_ctxt_switches:") {
                    a.involuntary += num(line).unwrap_or(0);
                }
            }
        }
    }
    a
}

/// Starts `n` pods of one sleep container each, `parallel` at a time.
fn start_pods(cd: &Containerd, handler: &str, n: usize, parallel: usize) -> Result<Vec<Pod>> {
    let next = AtomicUsize::new(0);
    let pods = std::sync::Mutex::new(Vec::new());
    let failures = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..parallel.max(1) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= n {
                    return;
                }
                let cri = cd.cri();
                let made = cri
                    .run_pod_sandbox(handler, &format!("density-{handler}-{i}"))
                    .and_then(|pod| {
                        cri.run_container(
                            &pod,
                            &ContainerSpec::new("sleep", &["sleep", "100000"]),
                        )?;
                        Ok(pod)
                    });
                match made {
                    Ok(pod) => pods.lock().unwrap().push(pod),
                    Err(e) => failures.lock().unwrap().push(format!("pod {i}: {e:#}")),
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    if !failures.is_empty() {
        bail!("{} pods failed: {}", failures.len(), failures.join("; "));
    }
    Ok(pods.into_inner().unwrap())
}

fn measure(cd: &Containerd, handler: &str, args: &Args) -> Result<Density> {
    let load_before = report::loadavg();
    let t = Instant::now();
    let pods = start_pods(cd, handler, args.pods, args.parallel)?;
    let start_secs = t.elapsed().as_secs_f64();
    // Let the start-up work (runc, events, logs) settle.
    std::thread::sleep(Duration::from_secs(3));
    let shims = handler_shims(cd, handler);
    if shims.len() != args.pods {
        bail!("{} {handler} shims for {} pods", shims.len(), args.pods);
    }
    let rss_kib = shims.iter().filter_map(|&p| sys::vm_rss_kib(p)).sum();
    let pss_kib = shims.iter().filter_map(|&p| sys::pss_kib(p)).sum();
    let containerd_rss_kib = cd
        .containerd_pid()
        .and_then(sys::vm_rss_kib)
        .context("containerd's RSS")?;

    let before: Vec<Activity> = shims.iter().map(|&p| activity(p)).collect();
    let idle = Instant::now();
    std::thread::sleep(Duration::from_secs(args.idle_secs));
    let idle_secs = idle.elapsed().as_secs_f64();
    let after: Vec<Activity> = shims.iter().map(|&p| activity(p)).collect();
    let mut d = Density {
        shims: shims.len(),
        start_secs,
        rss_kib,
        pss_kib,
        containerd_rss_kib,
        idle_secs,
        load: format!("{load_before} → {}", report::loadavg()),
        ..Default::default()
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    for (b, a) in before.iter().zip(&after) {
        d.idle_cpu_ms += a.cpu_ticks.saturating_sub(b.cpu_ticks) as f64 * 1000.0 / hz;
        d.idle_voluntary += a.voluntary.saturating_sub(b.voluntary);
        d.idle_involuntary += a.involuntary.saturating_sub(b.involuntary);
    }
    let cri = cd.cri();
    for pod in &pods {
        cri.stop_pod(&pod.id)?;
        cri.remove_pod(&pod.id)?;
    }
    Ok(d)
}

/// A row of the report: its name, its value of one handler, its decimals.
type Metric = (&'static str, fn(&Density) -> f64, usize);

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// `n` events over all shims, per shim and minute of the idle time.
fn per_min(n: u64, d: &Density) -> f64 {
    n as f64 / d.shims.max(1) as f64 * 60.0 / d.idle_secs
}

fn main() -> Result<()> {
    let args = Args::parse();
    report::require_shim_built(args.handlers.iter().map(String::as_str))?;
    let cd = Containerd::start().context("start private containerd")?;
    let mut results = Vec::new();
    for h in &args.handlers {
        eprintln!("brisk-density: {} pods on {h} ...", args.pods);
        results.push(measure(&cd, h, &args)?);
    }
    cd.assert_no_leaks();
    cd.finish();

    let rows: [Metric; 8] = [
        ("shims", |d| d.shims as f64, 0),
        ("start all pods (s)", |d| d.start_secs, 1),
        ("shim RSS, sum (MiB)", |d| mib(d.rss_kib), 1),
        ("shim PSS, sum (MiB)", |d| mib(d.pss_kib), 1),
        ("containerd RSS (MiB)", |d| mib(d.containerd_rss_kib), 1),
        ("idle CPU, all shims (ms)", |d| d.idle_cpu_ms, 0),
        (
            "idle voluntary switches per shim per min",
            |d| per_min(d.idle_voluntary, d),
            2,
        ),
        (
            "idle involuntary switches per shim per min",
            |d| per_min(d.idle_involuntary, d),
            2,
        ),
    ];
    println!();
    println!(
        "{} pods, {} at a time, {} s idle; load average (1, 5, 15 min) before → after each handler:",
        args.pods, args.parallel, args.idle_secs
    );
    for (h, d) in args.handlers.iter().zip(&results) {
        println!("- {}: {}", report::label(h), d.load);
    }
    println!();
    for line in report::comparison_header("metric", &args.handlers) {
        println!("{line}");
    }
    for (name, get, decimals) in &rows {
        let values: Vec<f64> = results.iter().map(get).collect();
        let mut cells: Vec<String> = vec![name.to_string()];
        cells.extend(values.iter().map(|v| format!("{v:.decimals$}")));
        if let [a, b] = values[..] {
            cells.push(report::ratio(a, b, 2));
        }
        println!("{}", report::row(cells));
    }
    Ok(())
}
