//! brisk-demo: start a private containerd, run a short-task pod under a CRI
//! handler (default `brisk`), print its lifecycle with timings, clean up.
//! Then the post-mortem's scenario for both handlers side by side: a
//! container exits by itself while strace delays every `umount2` of its shim
//! and a kubelet-like loop calls UpdateContainerResources every second and
//! ListContainers back to back; a table compares the stock shim and brisk.
//!
//! usage: brisk-demo [--handler brisk|runc] [--delay-secs 10] [--no-compare] [--compare-only HANDLER]

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use brisk_integration::cri::{state_name, ContainerState};
use brisk_integration::report::{self, label};
use brisk_integration::scenario::{self, human, Strace};
use brisk_integration::{sys, ContainerSpec, Containerd, BRISK_HANDLER, RUNC_HANDLER};
use clap::Parser;

/// A short-task pod's lifecycle with timings on a private containerd, then
/// the post-mortem's scenario (a container exits while its shim's umount2
/// is delayed) for the stock shim and brisk side by side.
#[derive(Parser, Debug)]
#[command(name = "brisk-demo")]
struct Args {
    /// CRI handler of the lifecycle demo.
    #[arg(long, value_name = "brisk|runc", default_value = BRISK_HANDLER)]
    handler: String,
    /// How long strace delays each umount2 of the shim in the comparison, in seconds.
    #[arg(long, value_name = "N", default_value_t = 10)]
    delay_secs: u64,
    /// Skip the comparison: only the lifecycle demo.
    #[arg(long)]
    no_compare: bool,
    /// Run the comparison's scenario for this handler only, without the table.
    #[arg(long, value_name = "HANDLER")]
    compare_only: Option<String>,
}

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
    report::require_shim_built([handler])?;
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
    if let Some(log) = keep_log(&cd, "lifecycle-containerd.log") {
        println!("containerd's log (with the shim's): {}", log.display());
    }
    cd.finish_checked()?;
    println!("private containerd stopped and removed");
    Ok(())
}

/// What one handler showed in the delayed-unmount scenario.
struct Side {
    exited_after: Duration,
    exit_code: i32,
    list_max: Duration,
    list_calls: usize,
    updates: usize,
    update_failures: Vec<String>,
    /// The shim's rootfs unmount as strace saw it: (span, calls).
    unmount: Option<(Duration, usize)>,
}

fn delayed_exit(handler: &str, delay: Duration) -> Result<Side> {
    println!(
        "\n== {}: a container that exits by itself after 4 s; strace delays every umount2 of the shim by {}",
        label(handler),
        human(delay)
    );
    let cd = Containerd::start().context("start private containerd")?;
    let cri = cd.cri();
    let clock = Clock(Instant::now());
    let before = scenario::handler_shims(&cd, handler);
    let pod = cri.run_pod_sandbox(handler, &format!("demo-exiting-{handler}"))?;
    let shim = scenario::shim_of_pod(&cd, handler, &pod.id, &before)?;
    let c = cri.run_container(&pod, &ContainerSpec::sh("short", "sleep 4; exit 5"))?;
    clock.say(format!(
        "pod {} and container {} running, shim pid {shim}",
        short(&pod.id),
        short(&c)
    ));
    let mut strace = Strace::attach(shim, &cd.dir.join("strace.txt"), Some(delay))?;
    clock.say("strace attached; kubelet-like loop: UpdateContainerResources every 1 s, ListContainers back to back");
    let stop = AtomicBool::new(false);
    let exited = AtomicBool::new(false);
    let side = std::thread::scope(|s| -> Result<Side> {
        let lister = s.spawn(|| scenario::list_loop(cri, &stop));
        let updater = s.spawn(|| scenario::update_loop(cri, &c, &stop, &exited));
        let st = cri.wait_for_exited(&c, Duration::from_secs(120));
        let seen = scenario::now_ns();
        exited.store(true, Ordering::SeqCst);
        let waited = st.map(|st| {
            let after = Duration::from_nanos((seen - st.finished_at).max(0) as u64);
            clock.say(format!(
                "container EXITED, exit code {}, seen {} after it exited",
                st.exit_code,
                human(after)
            ));
            // Keep the loop going until the delayed unmount is over.
            let span = strace.wait_unmount(&c, 2 * delay + Duration::from_secs(20));
            match span {
                Some(sp) => clock.say(format!(
                    "the shim's rootfs unmount is over: {} umount2 calls in {:.1} s",
                    sp.calls,
                    sp.secs()
                )),
                None => {
                    clock.say("strace saw no complete unmount of the rootfs; umount2 calls seen:");
                    for c in strace.calls() {
                        println!("             {c:?}");
                    }
                    println!("{}", cd.log_tail(30));
                }
            }
            std::thread::sleep(Duration::from_millis(500));
            (st, after, span)
        });
        stop.store(true, Ordering::SeqCst);
        let calls = lister.join().unwrap();
        let upd = updater.join().unwrap();
        let (st, after, span) = waited?;
        Ok(Side {
            exited_after: after,
            exit_code: st.exit_code,
            list_max: calls.iter().map(|c| c.took).max().unwrap_or_default(),
            list_calls: calls.len(),
            updates: upd.calls,
            update_failures: upd.failures,
            unmount: span.map(|sp| (Duration::from_secs_f64(sp.secs()), sp.calls)),
        })
    });
    strace.detach();
    let side = side?;
    clock.say(format!(
        "ListContainers: {} calls, max {}; UpdateContainerResources: {} calls, {} failed",
        side.list_calls,
        human(side.list_max),
        side.updates,
        side.update_failures.len()
    ));
    for f in side.update_failures.iter().take(3) {
        println!("             update failed: {f}");
    }
    cri.remove_container(&c)?;
    cri.stop_pod(&pod.id)?;
    cri.remove_pod(&pod.id)?;
    cd.wait_no_leaks(Duration::from_secs(30))?;
    let log = keep_log(&cd, &format!("{handler}-containerd.log"));
    cd.finish_checked()?;
    clock.say("cleaned up: strace detached, pod removed, containerd stopped, nothing left");
    if let Some(log) = log {
        println!(
            "             containerd's log (with the shim's): {}",
            log.display()
        );
    }
    Ok(side)
}

/// Where the demo keeps the private containerd's logs, which go with it.
const LOG_DIR: &str = "target/demo-logs";

/// Copies `cd`'s log (containerd's and, through it, the shim's) into
/// [`LOG_DIR`] before the private containerd's directory is removed.
fn keep_log(cd: &Containerd, name: &str) -> Option<std::path::PathBuf> {
    let dir = std::env::current_dir().ok()?.join(LOG_DIR);
    std::fs::create_dir_all(&dir).ok()?;
    let dest = dir.join(name);
    std::fs::copy(&cd.log_path, &dest).ok()?;
    Some(dest)
}

fn compare(delay: Duration, only: Option<&str>) -> Result<()> {
    let handlers = [RUNC_HANDLER, BRISK_HANDLER];
    if let Some(h) = only {
        delayed_exit(h, delay)?;
        return Ok(());
    }
    let mut sides = Vec::new();
    for h in handlers {
        sides.push(delayed_exit(h, delay)?);
    }
    let (a, b) = (&sides[0], &sides[1]);
    println!(
        "\numount2 delayed by {} (strace), container exits after 4 s with code 5\n",
        human(delay)
    );
    println!("| | {} | {} |", label(handlers[0]), label(handlers[1]));
    println!("|---|---:|---:|");
    println!(
        "| exit -> EXITED in CRI | {} | {} |",
        human(a.exited_after),
        human(b.exited_after)
    );
    println!(
        "| ListContainers max latency | {} | {} |",
        human(a.list_max),
        human(b.list_max)
    );
    println!(
        "| UpdateContainerResources calls (failed) | {} ({}) | {} ({}) |",
        a.updates,
        a.update_failures.len(),
        b.updates,
        b.update_failures.len()
    );
    println!("| exit code | {} | {} |", a.exit_code, b.exit_code);
    let um = |s: &Side| {
        s.unmount
            .map(|(d, n)| {
                format!(
                    "{} ({n} umount2 call{})",
                    human(d),
                    if n == 1 { "" } else { "s" }
                )
            })
            .unwrap_or_else(|| "not seen".into())
    };
    println!("| shim rootfs unmount (delayed) | {} | {} |", um(a), um(b));
    let stalled = |s: &Side| s.list_max.max(s.exited_after);
    println!(
        "\nverdict: with the unmount delayed, CRI waited up to {} under the stock shim and {} under brisk \
         ({:.0}x less; the longer of the slowest list and exit -> EXITED); brisk's exit code {} {} the stock shim's",
        human(stalled(a)),
        human(stalled(b)),
        stalled(a).as_secs_f64() / stalled(b).as_secs_f64().max(0.001),
        b.exit_code,
        if a.exit_code == b.exit_code { "matches" } else { "DIFFERS from" }
    );
    println!("full logs: {LOG_DIR}/ (containerd's, with the shim's lines, per handler)");
    Ok(())
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(&args.handler) {
        eprintln!("brisk-demo: {e:#}");
        std::process::exit(1);
    }
    if !args.no_compare {
        let delay = Duration::from_secs(args.delay_secs);
        if let Err(e) = compare(delay, args.compare_only.as_deref()) {
            eprintln!("brisk-demo: {e:#}");
            std::process::exit(1);
        }
    }
}
