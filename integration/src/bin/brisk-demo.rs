//! brisk-demo: start a private containerd, run a short-task pod under a CRI
//! handler (default `brisk`), print its lifecycle with timings, clean up.
//!
//! usage: brisk-demo [--handler brisk|runc] [--keep-log]

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use brisk_integration::cri::{state_name, ContainerState};
use brisk_integration::{sys, ContainerSpec, Containerd, BRISK_HANDLER};

struct Clock(Instant);

impl Clock {
    fn say(&self, msg: impl AsRef<str>) {
        println!(
            "[{:>8.1} ms] {}",
            self.0.elapsed().as_secs_f64() * 1000.0,
            msg.as_ref()
        );
    }
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

fn run(handler: &str) -> Result<()> {
    if handler == BRISK_HANDLER && !brisk_integration::brisk_shim_bin().is_file() {
        bail!(
            "brisk shim {} not built (cargo build --release -p brisk-shim)",
            brisk_integration::brisk_shim_bin().display()
        );
    }
    let cd = Containerd::start().context("start private containerd")?;
    let cri = cd.cri();
    let v = cri.version()?;
    println!(
        "containerd {} (CRI {}) at {}, handler {handler:?}",
        v.runtime_version,
        v.runtime_api_version,
        cd.address()
    );
    if handler == BRISK_HANDLER {
        println!("shim binary: {}", cd.brisk_bin.display());
    }
    let clock = Clock(Instant::now());

    clock.say("RunPodSandbox ...");
    let pod = cri.run_pod_sandbox(handler, "brisk-demo")?;
    let ps = cri.pod_status(&pod.id)?;
    let pstate = brisk_integration::cri::PodSandboxState::try_from(ps.state)
        .map(|s| format!("{s:?}"))
        .unwrap_or_else(|_| ps.state.to_string());
    clock.say(format!("pod {} ready (state {pstate})", short(&pod.id)));
    let shims = cd.shim_pids();
    for p in &shims {
        println!(
            "             shim pid {p}: {} VmRSS {} KiB",
            sys::exe(*p)
                .map(|e| e.display().to_string())
                .unwrap_or_default(),
            sys::vm_rss_kib(*p).unwrap_or(0)
        );
    }

    let spec = ContainerSpec::sh("task", "echo hello from a short task; sleep 0.2; exit 3");
    let id = cri.create_container(&pod, &spec)?;
    clock.say(format!("container {} created", short(&id)));
    cri.start_container(&id)?;
    clock.say(format!("container {} started", short(&id)));
    let st = cri.wait_for_exited(&id, Duration::from_secs(60))?;
    clock.say(format!(
        "container {} {}: exit code {}, reason {:?}, ran {:.1} ms (CRI started_at -> finished_at)",
        short(&id),
        state_name(st.state),
        st.exit_code,
        st.reason,
        (st.finished_at - st.started_at) as f64 / 1e6
    ));
    let log = std::fs::read_to_string(pod.log_directory.join("task.log")).unwrap_or_default();
    for l in log.lines() {
        println!("             log: {l}");
    }
    cri.remove_container(&id)?;
    clock.say(format!("container {} removed", short(&id)));
    cri.stop_pod(&pod.id)?;
    clock.say(format!("pod {} stopped", short(&pod.id)));
    cri.remove_pod(&pod.id)?;
    clock.say(format!("pod {} removed", short(&pod.id)));
    if cri
        .list_containers(None)?
        .iter()
        .any(|c| c.state != ContainerState::ContainerExited as i32)
    {
        bail!("containers still listed");
    }
    cd.wait_no_leaks(Duration::from_secs(15))?;
    println!("no shim processes, mounts, sockets, cgroups or runc state left");
    cd.finish_checked()?;
    println!("private containerd stopped and removed");
    Ok(())
}

fn main() {
    let mut handler = BRISK_HANDLER.to_string();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--handler" => handler = args.next().unwrap_or_default(),
            "-h" | "--help" => {
                println!("usage: brisk-demo [--handler brisk|runc]");
                return;
            }
            other => {
                eprintln!("unknown argument {other:?}");
                std::process::exit(2);
            }
        }
    }
    if let Err(e) = run(&handler) {
        eprintln!("brisk-demo: {e:#}");
        std::process::exit(1);
    }
}
