//! brisk-soak: many short tasks across pods at once under brisk, with a
//! kubelet-like loop and delayed unmounts on some shims; prints the footprint
//! curve, ListContainers latency and every leak found. With `--chaos`, the
//! chaos soak (integration/src/chaos.rs): faults of every kind at once on a
//! seeded schedule, every task's end checked.

use std::time::Duration;

use anyhow::Result;
use brisk_integration::chaos::{self, ChaosParams};
use brisk_integration::soak::{self, SoakParams};
use clap::Parser;

/// Many short tasks across pods at once under one handler, with a
/// kubelet-like loop and delayed unmounts on some shims; prints the shims'
/// footprint curve, ListContainers latency and every leak found.
#[derive(Parser, Debug)]
#[command(name = "brisk-soak")]
struct Args {
    /// Pods running tasks at once.
    #[arg(long, value_name = "N", default_value_t = SoakParams::default().pods)]
    pods: usize,
    /// Short tasks run one after another in each pod.
    #[arg(long, value_name = "N", default_value_t = SoakParams::default().tasks_per_pod)]
    tasks_per_pod: usize,
    /// Shims (of the first pods) whose umount2 calls strace delays.
    #[arg(long, value_name = "N", default_value_t = SoakParams::default().delayed_shims)]
    delayed_shims: usize,
    /// How long each delayed umount2 is held, in milliseconds.
    #[arg(long, value_name = "N", default_value_t = SoakParams::default().delay.as_millis() as u64)]
    delay_ms: u64,
    /// CRI handler of the pods (`runc` for the stock shim).
    #[arg(long, value_name = "H", default_value_t = SoakParams::default().handler)]
    handler: String,
    /// How long each task runs before it exits, in milliseconds (0: it
    /// exits at once, so every Update meets an exiting container).
    #[arg(long, value_name = "N", default_value_t = SoakParams::default().task_runs.as_millis() as u64)]
    task_ms: u64,
    /// The chaos soak: containerd restarts, shim kills, delayed unmounts,
    /// hung runc, a full root and OOM kills at once (`--pods` and
    /// `--tasks-per-pod` apply; defaults 10 and 100).
    #[arg(long)]
    chaos: bool,
    /// The chaos run's seed (default: from the clock; printed, to replay).
    #[arg(long, value_name = "N")]
    seed: Option<u64>,
    /// The short chaos run of the test command (3 pods, about 3 minutes).
    #[arg(long, requires = "chaos")]
    short: bool,
}

impl From<Args> for SoakParams {
    fn from(a: Args) -> Self {
        SoakParams {
            pods: a.pods,
            tasks_per_pod: a.tasks_per_pod,
            delayed_shims: a.delayed_shims,
            delay: Duration::from_millis(a.delay_ms),
            handler: a.handler,
            task_runs: Duration::from_millis(a.task_ms),
        }
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.chaos {
        return run_chaos(&args);
    }
    let p = SoakParams::from(args);
    eprintln!("soak: {p:?}");
    let r = soak::run(&p)?;
    print!("{}", r.render());
    let ok = r.passed();
    println!("verdict: {}", if ok { "PASS" } else { "FAIL" });
    if !ok {
        std::process::exit(1);
    }
    Ok(())
}

fn run_chaos(a: &Args) -> Result<()> {
    let seed = a.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(1)
    });
    let p = if a.short {
        ChaosParams::short(&a.handler, seed)
    } else {
        ChaosParams {
            pods: a.pods,
            tasks_per_pod: a.tasks_per_pod,
            handler: a.handler.clone(),
            seed,
            ..Default::default()
        }
    };
    eprintln!("chaos: {p:?}");
    let r = chaos::run(&p)?;
    print!("{}", r.render());
    let ok = r.passed();
    println!(
        "verdict: {} (replay: scripts/soak.sh --chaos --seed {seed} --handler {}{})",
        if ok { "PASS" } else { "FAIL" },
        a.handler,
        if a.short {
            " --short".to_string()
        } else {
            format!(" --pods {} --tasks-per-pod {}", a.pods, a.tasks_per_pod)
        }
    );
    if !ok {
        std::process::exit(1);
    }
    Ok(())
}
