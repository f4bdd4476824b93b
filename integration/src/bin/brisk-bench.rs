//! brisk-bench: the stock runc shim against brisk, measured in one run on one
//! private containerd.
//!
//! * shim RSS for a pod with 1 container, and with N containers (growth per
//!   extra container): sum of VmRSS of the shim processes serving the pod;
//! * CRI create -> start -> exit seen -> remove time of a short container,
//!   iterations alternating between the handlers; median and p90.
//!
//! usage: brisk-bench [--iterations N] [--containers N] [--handlers runc,brisk]

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use brisk_integration::cri::ContainerState;
use brisk_integration::{sys, ContainerSpec, Containerd, Pod, BRISK_HANDLER, RUNC_HANDLER};

struct Args {
    iterations: usize,
    containers: usize,
    handlers: Vec<String>,
}

#[derive(Default, Clone)]
struct Result1 {
    rss_1_kib: u64,
    rss_n_kib: u64,
    shims_1: usize,
    shims_n: usize,
    cycle_ms: Vec<f64>,
}

fn shims_of(cd: &Containerd, handler: &str) -> Vec<i32> {
    if handler == BRISK_HANDLER {
        cd.brisk_shim_pids()
    } else {
        cd.runc_shim_pids()
    }
}

fn rss_sum(pids: &[i32]) -> u64 {
    pids.iter().filter_map(|&p| sys::vm_rss_kib(p)).sum()
}

/// Let RSS settle, then sample a few times and keep the maximum.
fn settled_rss(cd: &Containerd, handler: &str) -> (u64, usize) {
    std::thread::sleep(Duration::from_millis(500));
    let mut best = (0, 0);
    for _ in 0..5 {
        let pids = shims_of(cd, handler);
        let r = rss_sum(&pids);
        if r > best.0 {
            best = (r, pids.len());
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
    (out.rss_1_kib, out.shims_1) = settled_rss(cd, handler);
    for i in 1..n {
        cri.run_container(
            &pod,
            &ContainerSpec::new(&format!("c{i}"), &["sleep", "100000"]),
        )?;
    }
    (out.rss_n_kib, out.shims_n) = settled_rss(cd, handler);
    cri.stop_pod(&pod.id)?;
    cri.remove_pod(&pod.id)?;
    Ok(())
}

fn one_cycle(cd: &Containerd, pod: &Pod, i: usize) -> Result<f64> {
    let cri = cd.cri();
    let spec = ContainerSpec::sh(&format!("cycle-{i}"), "exit 0");
    let t0 = Instant::now();
    let id = cri.create_container(pod, &spec)?;
    cri.start_container(&id)?;
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
    cri.remove_container(&id)?;
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
            let ms = one_cycle(&cd, pod, i)?;
            results[idx].cycle_ms.push(ms);
        }
    }
    for pod in &pods {
        cd.cri().stop_pod(&pod.id)?;
        cd.cri().remove_pod(&pod.id)?;
    }
    cd.wait_no_leaks(Duration::from_secs(15))?;
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
            "shim processes per pod".into(),
            Box::new(|r: &Result1| r.shims_n as f64),
            0,
        ),
        (
            "create→start→exit→remove, median (ms)".into(),
            Box::new(|r: &Result1| percentile(&r.cycle_ms, 0.5)),
            1,
        ),
        (
            "create→start→exit→remove, p90 (ms)".into(),
            Box::new(|r: &Result1| percentile(&r.cycle_ms, 0.9)),
            1,
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
    let mut args = Args {
        iterations: 20,
        containers: 5,
        handlers: vec![RUNC_HANDLER.into(), BRISK_HANDLER.into()],
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = || it.next().unwrap_or_default();
        match a.as_str() {
            "--iterations" => args.iterations = val().parse().unwrap_or(20),
            "--containers" => args.containers = val().parse::<usize>().unwrap_or(5).max(2),
            "--handlers" => {
                args.handlers = val()
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect()
            }
            "-h" | "--help" => {
                println!(
                    "usage: brisk-bench [--iterations N] [--containers N] [--handlers runc,brisk]"
                );
                return;
            }
            other => {
                eprintln!("unknown argument {other:?}");
                std::process::exit(2);
            }
        }
    }
    if let Err(e) = run(&args) {
        eprintln!("brisk-bench: {e:#}");
        std::process::exit(1);
    }
}
