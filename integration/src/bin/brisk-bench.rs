//! brisk-bench: the stock runc shim against brisk, measured in one run on one
//! private containerd.
//!
//! * shim RSS for a pod with 1 container, and with N containers (growth per
//!   extra container): sum of VmRSS of the shim processes serving the pod;
//! * the same for PSS (shared pages split among the processes mapping them)
//!   and the shims' thread count;
//! * CRI create -> start -> exit seen -> remove time of a short container,
//!   iterations alternating between the handlers; p50 and p99, and within it
//!   the time from StartContainer returning to EXITED seen (the container's
//!   `exit 0` takes about a millisecond, so this is exit -> EXITED);
//! * the pod cycle: RunPodSandbox -> StopPodSandbox -> RemovePodSandbox;
//! * ListContainers p50 and p99 with 100 running containers across 10 pods
//!   of one handler (`--list-pods`, `--list-per-pod`; 0 skips it).
//!
//! usage: brisk-bench [--iterations N] [--containers N] [--handlers runc,brisk]

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use brisk_integration::cri::ContainerState;
use brisk_integration::report::Handlers;
use brisk_integration::{sys, ContainerSpec, Containerd, Pod, BRISK_HANDLER, RUNC_HANDLER};
use clap::Parser;

/// The stock runc shim against brisk on one private containerd: shim RSS,
/// PSS and threads per pod, container and pod cycle times, ListContainers
/// latency; prints a markdown table.
#[derive(Parser, Debug)]
#[command(name = "brisk-bench")]
struct Args {
    /// Measured container cycles and pod cycles per handler.
    #[arg(long, value_name = "N", default_value_t = 20)]
    iterations: usize,
    /// Containers in the pod of the larger footprint sample (at least 2).
    #[arg(long, value_name = "N", default_value_t = 5)]
    containers: usize,
    /// Pods of running containers while ListContainers is timed (0 skips it).
    #[arg(long, value_name = "N", default_value_t = 10)]
    list_pods: usize,
    /// Running containers in each of those pods.
    #[arg(long, value_name = "N", default_value_t = 10)]
    list_per_pod: usize,
    /// CRI handlers to measure, comma-separated, in table order.
    #[arg(long, value_name = "H,H", default_value_t = Handlers::stock_and_brisk())]
    handlers: Handlers,
}

/// ListContainers latency with `pods` x `per_pod` running containers of one
/// handler; the pods are removed afterwards.
fn measure_list(cd: &Containerd, handler: &str, pods: usize, per_pod: usize) -> Result<Vec<f64>> {
    let cri = cd.cri();
    let mut made = Vec::new();
    for p in 0..pods {
        let pod = cri.run_pod_sandbox(handler, &format!("list-{handler}-{p}"))?;
        for c in 0..per_pod {
            cri.run_container(
                &pod,
                &ContainerSpec::new(&format!("c{c}"), &["sleep", "100000"]),
            )?;
        }
        made.push(pod);
    }
    let mut ms = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        let n = cri.list_containers(None)?.len();
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
        if n < pods * per_pod {
            bail!("ListContainers saw {n} containers");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    for pod in &made {
        cri.stop_pod(&pod.id)?;
        cri.remove_pod(&pod.id)?;
    }
    Ok(ms)
}

#[derive(Default, Clone)]
struct Result1 {
    rss_1_kib: u64,
    rss_n_kib: u64,
    pss_1_kib: u64,
    pss_n_kib: u64,
    threads_1: u64,
    threads_n: u64,
    shims_1: usize,
    shims_n: usize,
    cycle_ms: Vec<f64>,
    exited_ms: Vec<f64>,
    pod_ms: Vec<f64>,
    list_ms: Vec<f64>,
}

/// One footprint sample of the shims serving a pod.
#[derive(Default, Clone, Copy)]
struct Footprint {
    rss_kib: u64,
    pss_kib: u64,
    threads: u64,
    shims: usize,
}

fn shims_of(cd: &Containerd, handler: &str) -> Vec<i32> {
    if handler == BRISK_HANDLER {
        cd.brisk_shim_pids()
    } else {
        cd.runc_shim_pids()
    }
}

fn footprint(pids: &[i32]) -> Footprint {
    Footprint {
        rss_kib: pids.iter().filter_map(|&p| sys::vm_rss_kib(p)).sum(),
        pss_kib: pids.iter().filter_map(|&p| sys::pss_kib(p)).sum(),
        threads: pids.iter().filter_map(|&p| sys::threads(p)).sum(),
        shims: pids.len(),
    }
}

/// Let the shims settle, then sample a few times and keep the sample with
/// the largest RSS.
fn settled_footprint(cd: &Containerd, handler: &str) -> Footprint {
    std::thread::sleep(Duration::from_millis(500));
    let mut best = Footprint::default();
    for _ in 0..5 {
        let f = footprint(&shims_of(cd, handler));
        if f.rss_kib > best.rss_kib {
            best = f;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    best
}

fn measure_rss(cd: &Containerd, handler: &str, n: usize, out: &mut Result1) -> Result<()> {
    let cri = cd.cri();
    if !shims_of(cd, handler).is_empty() {
        bail!("{handler} shims already running");
    }
    let pod = cri.run_pod_sandbox(handler, &format!("rss-{handler}"))?;
    cri.run_container(&pod, &ContainerSpec::new("c0", &["sleep", "100000"]))?;
    let f = settled_footprint(cd, handler);
    (out.rss_1_kib, out.pss_1_kib, out.threads_1, out.shims_1) =
        (f.rss_kib, f.pss_kib, f.threads, f.shims);
    for i in 1..n {
        cri.run_container(
            &pod,
            &ContainerSpec::new(&format!("c{i}"), &["sleep", "100000"]),
        )?;
    }
    let f = settled_footprint(cd, handler);
    (out.rss_n_kib, out.pss_n_kib, out.threads_n, out.shims_n) =
        (f.rss_kib, f.pss_kib, f.threads, f.shims);
    cri.stop_pod(&pod.id)?;
    cri.remove_pod(&pod.id)?;
    Ok(())
}

/// One container cycle: (create -> removed, StartContainer returned -> EXITED seen), ms.
fn one_cycle(cd: &Containerd, pod: &Pod, i: usize) -> Result<(f64, f64)> {
    let cri = cd.cri();
    let spec = ContainerSpec::sh(&format!("cycle-{i}"), "exit 0");
    let t0 = Instant::now();
    let id = cri.create_container(pod, &spec)?;
    cri.start_container(&id)?;
    let started = Instant::now();
    let deadline = t0 + Duration::from_secs(60);
    loop {
        let st = cri.container_status(&id)?;
        if st.state == ContainerState::ContainerExited as i32 {
            if st.exit_code != 0 {
                bail!("cycle container exited {}", st.exit_code);
            }
            break;
        }
        if Instant::now() > deadline {
            bail!("cycle container did not exit");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let exited = started.elapsed().as_secs_f64() * 1000.0;
    cri.remove_container(&id)?;
    Ok((t0.elapsed().as_secs_f64() * 1000.0, exited))
}

/// One pod cycle: RunPodSandbox -> StopPodSandbox -> RemovePodSandbox, ms.
fn one_pod_cycle(cd: &Containerd, handler: &str, i: usize) -> Result<f64> {
    let cri = cd.cri();
    let t0 = Instant::now();
    let pod = cri.run_pod_sandbox(handler, &format!("podcycle-{handler}-{i}"))?;
    cri.stop_pod(&pod.id)?;
    cri.remove_pod(&pod.id)?;
    Ok(t0.elapsed().as_secs_f64() * 1000.0)
}

fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let idx = ((s.len() - 1) as f64 * p).round() as usize;
    s[idx]
}

fn ratio(a: f64, b: f64) -> String {
    if a.is_finite() && b.is_finite() && a > 0.0 {
        format!("{:.2}x", b / a)
    } else {
        "-".into()
    }
}

fn run(args: &Args) -> Result<()> {
    for h in &args.handlers {
        if h == BRISK_HANDLER && !brisk_integration::brisk_shim_bin().is_file() {
            bail!(
                "brisk shim {} not built",
                brisk_integration::brisk_shim_bin().display()
            );
        }
    }
    let cd = Containerd::start().context("start private containerd")?;
    let mut results: Vec<Result1> = vec![Result1::default(); args.handlers.len()];

    for (h, r) in args.handlers.iter().zip(results.iter_mut()) {
        eprintln!("measuring RSS of {h} ...");
        measure_rss(&cd, h, args.containers, r)?;
    }

    eprintln!(
        "measuring {} create/start/exit/remove cycles per handler ...",
        args.iterations
    );
    let pods: Vec<Pod> = args
        .handlers
        .iter()
        .map(|h| cd.cri().run_pod_sandbox(h, &format!("cycle-{h}")))
        .collect::<Result<_>>()?;
    // One warm-up cycle each, not counted.
    for pod in &pods {
        one_cycle(&cd, pod, 0)?;
    }
    for i in 1..=args.iterations {
        for (k, pod) in pods.iter().enumerate() {
            // Alternate which handler goes first.
            let pod = if i % 2 == 0 {
                pod
            } else {
                &pods[pods.len() - 1 - k]
            };
            let idx = args
                .handlers
                .iter()
                .position(|h| *h == pod.handler)
                .unwrap();
            let (ms, exited) = one_cycle(&cd, pod, i)?;
            results[idx].cycle_ms.push(ms);
            results[idx].exited_ms.push(exited);
        }
    }
    for pod in &pods {
        cd.cri().stop_pod(&pod.id)?;
        cd.cri().remove_pod(&pod.id)?;
    }
    eprintln!("measuring {} pod cycles per handler ...", args.iterations);
    for h in &args.handlers {
        one_pod_cycle(&cd, h, 0)?;
    }
    for i in 1..=args.iterations {
        for k in 0..args.handlers.len() {
            let k = if i % 2 == 0 {
                k
            } else {
                args.handlers.len() - 1 - k
            };
            let ms = one_pod_cycle(&cd, &args.handlers[k], i)?;
            results[k].pod_ms.push(ms);
        }
    }
    if args.list_pods > 0 {
        for (h, r) in args.handlers.iter().zip(results.iter_mut()) {
            eprintln!(
                "measuring ListContainers with {}x{} {h} containers ...",
                args.list_pods, args.list_per_pod
            );
            r.list_ms = measure_list(&cd, h, args.list_pods, args.list_per_pod)?;
        }
    }
    cd.wait_no_leaks(Duration::from_secs(30))?;
    let v = cd.cri().version()?;
    cd.finish_checked()?;

    let n = args.containers;
    let header: Vec<String> = args
        .handlers
        .iter()
        .map(|h| {
            if h == RUNC_HANDLER {
                "runc (stock)".into()
            } else {
                h.clone()
            }
        })
        .collect();
    println!(
        "\ncontainerd {}, {} iterations, {} CPUs\n",
        v.runtime_version,
        args.iterations,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    let with_ratio = args.handlers.len() == 2;
    print!("| metric | {} |", header.join(" | "));
    if with_ratio {
        print!(" {} / {} |", header[1], header[0]);
    }
    println!();
    print!("|---|{}", "---:|".repeat(header.len()));
    if with_ratio {
        print!("---:|");
    }
    println!();
    type Row = (String, Box<dyn Fn(&Result1) -> f64>, usize);
    let rows: Vec<Row> = vec![
        (
            "shim RSS, pod with 1 container (MiB)".into(),
            Box::new(|r: &Result1| r.rss_1_kib as f64 / 1024.0),
            2,
        ),
        (
            format!("shim RSS, pod with {n} containers (MiB)"),
            Box::new(|r: &Result1| r.rss_n_kib as f64 / 1024.0),
            2,
        ),
        (
            "RSS per extra container (KiB)".into(),
            Box::new(move |r: &Result1| {
                (r.rss_n_kib as f64 - r.rss_1_kib as f64) / (n.max(2) - 1) as f64
            }),
            0,
        ),
        (
            "shim PSS, pod with 1 container (MiB)".into(),
            Box::new(|r: &Result1| r.pss_1_kib as f64 / 1024.0),
            2,
        ),
        (
            format!("shim PSS, pod with {n} containers (MiB)"),
            Box::new(|r: &Result1| r.pss_n_kib as f64 / 1024.0),
            2,
        ),
        (
            "PSS per extra container (KiB)".into(),
            Box::new(move |r: &Result1| {
                (r.pss_n_kib as f64 - r.pss_1_kib as f64) / (n.max(2) - 1) as f64
            }),
            0,
        ),
        (
            "shim threads, pod with 1 container".into(),
            Box::new(|r: &Result1| r.threads_1 as f64),
            0,
        ),
        (
            format!("shim threads, pod with {n} containers"),
            Box::new(|r: &Result1| r.threads_n as f64),
            0,
        ),
        (
            "shim processes per pod".into(),
            Box::new(|r: &Result1| r.shims_n as f64),
            0,
        ),
        (
            "container create→start→exit→remove, p50 (ms)".into(),
            Box::new(|r: &Result1| percentile(&r.cycle_ms, 0.5)),
            1,
        ),
        (
            "container create→start→exit→remove, p99 (ms)".into(),
            Box::new(|r: &Result1| percentile(&r.cycle_ms, 0.99)),
            1,
        ),
        (
            "exit→EXITED seen (StartContainer returned→EXITED), p50 (ms)".into(),
            Box::new(|r: &Result1| percentile(&r.exited_ms, 0.5)),
            1,
        ),
        (
            "exit→EXITED seen, p99 (ms)".into(),
            Box::new(|r: &Result1| percentile(&r.exited_ms, 0.99)),
            1,
        ),
        (
            "pod run→stop→remove, p50 (ms)".into(),
            Box::new(|r: &Result1| percentile(&r.pod_ms, 0.5)),
            1,
        ),
        (
            "pod run→stop→remove, p99 (ms)".into(),
            Box::new(|r: &Result1| percentile(&r.pod_ms, 0.99)),
            1,
        ),
        (
            format!(
                "ListContainers, {} containers, p50 (ms)",
                args.list_pods * args.list_per_pod
            ),
            Box::new(|r: &Result1| percentile(&r.list_ms, 0.5)),
            2,
        ),
        (
            format!(
                "ListContainers, {} containers, p99 (ms)",
                args.list_pods * args.list_per_pod
            ),
            Box::new(|r: &Result1| percentile(&r.list_ms, 0.99)),
            2,
        ),
    ];
    for (name, f, prec) in rows {
        let vals: Vec<f64> = results.iter().map(&f).collect();
        print!("| {name} |");
        for v in &vals {
            print!(" {v:.prec$} |");
        }
        if with_ratio {
            print!(" {} |", ratio(vals[0], vals[1]));
        }
        println!();
    }
    Ok(())
}

fn main() {
    let mut args = Args::parse();
    args.containers = args.containers.max(2);
    if let Err(e) = run(&args) {
        eprintln!("brisk-bench: {e:#}");
        std::process::exit(1);
    }
}
