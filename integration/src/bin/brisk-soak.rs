//! brisk-soak: many short tasks across pods at once under brisk, with a
//! kubelet-like loop and delayed unmounts on some shims; prints the footprint
//! curve, ListContainers latency and every leak found.
//!
//! usage: brisk-soak [--pods N] [--tasks-per-pod N] [--delayed-shims N] [--delay-ms N] [--handler H] [--task-ms N]

use std::time::Duration;

use anyhow::{bail, Context, Result};
use brisk_integration::soak::{self, SoakParams};

fn parse() -> Result<SoakParams> {
    let mut p = SoakParams::default();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--pods" => p.pods = val()?.parse()?,
            "--tasks-per-pod" => p.tasks_per_pod = val()?.parse()?,
            "--delayed-shims" => p.delayed_shims = val()?.parse()?,
            "--delay-ms" => p.delay = Duration::from_millis(val()?.parse()?),
            "--handler" => p.handler = val()?,
            "--task-ms" => p.task_runs = Duration::from_millis(val()?.parse()?),
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(p)
}

fn main() -> Result<()> {
    let p = parse()?;
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
