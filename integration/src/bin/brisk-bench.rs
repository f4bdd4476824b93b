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
//! * a shim's start on its own: `SHIM ... start` in a bundle, as containerd
//!   runs it, to the started shim's first ttrpc answer (Connect);
//! * ListContainers p50 and p99 with 100 running containers across 10 pods
//!   of one handler (`--list-pods`, `--list-per-pod`; 0 skips it).
//! * the runc processes each shim starts for one container cycle and one
//!   pod cycle, counted by a logging runc wrapper on a second containerd
//!   (its shell start-up would skew the times, so nothing is timed there);
//! * the floor: `runc` alone (the run's OCI runtime), create -> start ->
//!   wait -> delete of busybox `true` with no containerd and no shim, the
//!   same number of times: what neither shim can take away. Each handler's container cycle above it is
//!   that handler's (and containerd's) own share.
//!
//! usage: brisk-bench [--iterations N] [--containers N] [--list-pods N]
//!        [--list-per-pod N] [--handlers runc,brisk]

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use brisk_integration::cri::ContainerState;
use brisk_integration::fault::RuncWrapper;
use brisk_integration::report::{self, Handlers};
use brisk_integration::scenario::{handler_shims, quantile};
use brisk_integration::{sys, ContainerSpec, Containerd, Options, Pod, BRISK_HANDLER};
use clap::Parser;
use containerd_shim_protos::api::{ConnectRequest, ShutdownRequest};
use containerd_shim_protos::shim_async::{Client, TaskClient};
use containerd_shim_protos::ttrpc;

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

/// `runc` alone: create -> start -> wait -> delete of busybox `true` in a
/// bundle of its own, `n` times (after one not counted), ms each. The
/// container's init is waited for as its parent: this process is made a
/// child subreaper for the run (before any containerd or shim exists, so
/// nothing else is re-parented to it) and stops being one after.
fn measure_runc_floor(n: usize) -> Result<Vec<f64>> {
    // The run's runtime (crun with BRISK_OCI_RUNTIME=crun), as the shims'.
    let runc = brisk_integration::containerd::selected_runc_bin(&Options::default())
        .unwrap_or_else(brisk_integration::fault::real_runc);
    let dir = std::env::temp_dir().join(format!("brisk-bench-floor-{}", std::process::id()));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("create {}", dir.display()))?;
    let parent = format!("brisk-bench-floor-{}", std::process::id());
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let measured = (|| {
        let bundle = floor_bundle(&dir, &runc, &parent)?;
        let root = dir.join("runc-root");
        let mut ms = Vec::with_capacity(n);
        for i in 0..=n {
            let t = floor_cycle(&runc, &root, &bundle, &format!("floor-{i}"))?;
            if i > 0 {
                ms.push(t);
            }
        }
        anyhow::Ok(ms)
    })();
    // SAFETY: as above.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0) };
    for e in sys::destroy_cgroup_tree(&parent, true) {
        eprintln!("floor cleanup: {e}");
    }
    let _ = std::fs::remove_dir_all(&dir);
    measured
}

/// A bundle whose rootfs holds the host's static busybox, its process
/// `busybox true` without a terminal, its cgroups below `parent`.
fn floor_bundle(dir: &Path, runc: &Path, parent: &str) -> Result<PathBuf> {
    let bundle = dir.join("bundle");
    std::fs::create_dir_all(bundle.join("rootfs/bin"))?;
    std::fs::copy("/bin/busybox", bundle.join("rootfs/bin/busybox"))
        .context("copy /bin/busybox (apt-get install busybox-static)")?;
    let st = Command::new(runc)
        .args(["spec", "--bundle"])
        .arg(&bundle)
        .status()
        .context("runc spec")?;
    if !st.success() {
        bail!("runc spec: {st}");
    }
    let path = bundle.join("config.json");
    let mut spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    spec["process"]["terminal"] = false.into();
    spec["process"]["args"] = serde_json::json!(["/bin/busybox", "true"]);
    spec["linux"]["cgroupsPath"] = format!("/{parent}/floor").into();
    std::fs::write(&path, serde_json::to_vec(&spec)?)?;
    Ok(bundle)
}

/// One `runc create`, `runc start`, wait for the init's exit, `runc
/// delete`; ms. A cycle that fails deletes what it made.
fn floor_cycle(runc: &Path, root: &Path, bundle: &Path, id: &str) -> Result<f64> {
    let ms = floor_cycle_once(runc, root, bundle, id);
    if ms.is_err() {
        let _ = Command::new(runc)
            .arg("--root")
            .arg(root)
            .args(["delete", "--force", id])
            .output();
    }
    ms
}

fn floor_cycle_once(runc: &Path, root: &Path, bundle: &Path, id: &str) -> Result<f64> {
    let pid_file = bundle.with_file_name(format!("{id}.pid"));
    let log = bundle.with_file_name("runc.log");
    // No pipes: without a terminal the container's stdio is runc's, and a
    // pipe would stay open as long as the container runs. runc's own
    // errors go to its log.
    let run = |args: &[&str]| -> Result<()> {
        let st = Command::new(runc)
            .arg("--root")
            .arg(root)
            .arg("--log")
            .arg(&log)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .with_context(|| format!("runc {}", args[0]))?;
        if !st.success() {
            let said = std::fs::read_to_string(&log).unwrap_or_default();
            bail!("runc {}: {st}: {}", args[0], said.trim());
        }
        Ok(())
    };
    let t = Instant::now();
    run(&[
        "create",
        "--bundle",
        &bundle.to_string_lossy(),
        "--pid-file",
        &pid_file.to_string_lossy(),
        id,
    ])?;
    let pid: i32 = std::fs::read_to_string(&pid_file)?.trim().parse()?;
    run(&["start", id])?;
    // SAFETY: waitpid on a pid this process is the (sub)reaper of.
    let mut status = 0;
    if unsafe { libc::waitpid(pid, &mut status, 0) } != pid {
        bail!("waitpid {pid}: {}", std::io::Error::last_os_error());
    }
    run(&["delete", id])?;
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    let _ = std::fs::remove_file(&pid_file);
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("busybox true ended with wait status {status}");
    }
    Ok(ms)
}

/// What was measured of one handler.
#[derive(Default, Clone)]
struct Result1 {
    /// The shims of a pod with 1 container, and with `--containers`.
    one: Footprint,
    many: Footprint,
    cycle_ms: Vec<f64>,
    exited_ms: Vec<f64>,
    pod_ms: Vec<f64>,
    shim_start_ms: Vec<f64>,
    list_ms: Vec<f64>,
    /// runc processes started for one container cycle, one pod cycle.
    runc_per_cycle: RuncCalls,
    runc_per_pod: RuncCalls,
}

/// The runc subcommands of one cycle, in order.
#[derive(Default, Clone)]
struct RuncCalls(Vec<String>);

/// Counts the runc processes of one container cycle and one pod cycle of
/// each handler, through [`RuncWrapper`] given to both shims as their runc.
fn count_runc_calls(handlers: &[String], results: &mut [Result1]) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("brisk-bench-runc-{}", std::process::id()));
    // A fresh directory only root can enter: create fails on anything that
    // is there already (a symlink included).
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("create {}", dir.display()))?;
    let counted = (|| {
        let wrapper = RuncWrapper::install(&dir)?;
        let cd = Containerd::start_with(Options {
            runc_bin: Some(wrapper.path.clone()),
            ..Default::default()
        })
        .context("start the counting containerd")?;
        for (h, r) in handlers.iter().zip(results.iter_mut()) {
            let pod = cd.cri().run_pod_sandbox(h, &format!("count-{h}"))?;
            one_cycle(&cd, &pod, 0)?;
            let id = counted_cycle(&cd, &pod)?;
            r.runc_per_cycle = RuncCalls(wrapper.calls_of(&id));
            cd.cri().stop_pod(&pod.id)?;
            cd.cri().remove_pod(&pod.id)?;
            let pod = cd.cri().run_pod_sandbox(h, &format!("count-pod-{h}"))?;
            cd.cri().stop_pod(&pod.id)?;
            cd.cri().remove_pod(&pod.id)?;
            r.runc_per_pod = RuncCalls(wrapper.calls_of(&pod.id));
        }
        cd.wait_no_leaks(Duration::from_secs(30))?;
        cd.finish_checked()
    })();
    let _ = std::fs::remove_dir_all(&dir);
    counted
}

/// A container cycle as [`one_cycle`] runs it, returning the container's id.
fn counted_cycle(cd: &Containerd, pod: &Pod) -> Result<String> {
    let cri = cd.cri();
    let id = cri.create_container(pod, &ContainerSpec::sh("counted", "exit 0"))?;
    cri.start_container(&id)?;
    cri.wait_for_exited(&id, Duration::from_secs(60))?;
    cri.remove_container(&id)?;
    Ok(id)
}

/// One footprint sample of the shims serving a pod.
#[derive(Default, Clone, Copy)]
struct Footprint {
    rss_kib: u64,
    pss_kib: u64,
    threads: u64,
    shims: usize,
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
        let f = footprint(&handler_shims(cd, handler));
        if f.rss_kib > best.rss_kib {
            best = f;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    best
}

fn measure_rss(cd: &Containerd, handler: &str, n: usize, out: &mut Result1) -> Result<()> {
    let cri = cd.cri();
    if !handler_shims(cd, handler).is_empty() {
        bail!("{handler} shims already running");
    }
    let pod = cri.run_pod_sandbox(handler, &format!("rss-{handler}"))?;
    cri.run_container(&pod, &ContainerSpec::new("c0", &["sleep", "100000"]))?;
    out.one = settled_footprint(cd, handler);
    for i in 1..n {
        cri.run_container(
            &pod,
            &ContainerSpec::new(&format!("c{i}"), &["sleep", "100000"]),
        )?;
    }
    out.many = settled_footprint(cd, handler);
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

/// The shim binary of `handler`: brisk's, or the stock one that comes with
/// the containerd run.
fn shim_bin(cd: &Containerd, handler: &str) -> PathBuf {
    if handler == BRISK_HANDLER {
        cd.brisk_bin.clone()
    } else {
        cd.containerd_bin
            .parent()
            .unwrap_or(Path::new("/usr/bin"))
            .join("containerd-shim-runc-v2")
    }
}

/// A fifo at `path`, and its read end (non-blocking), as containerd makes
/// the `log` of a bundle before it starts a shim: the stock shim opens it
/// for writing and fails if it is not there.
fn log_fifo(path: &Path) -> Result<std::fs::File> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: `c` is a NUL-terminated path that lives across the call.
    if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
        return Err(std::io::Error::last_os_error()).context(format!("mkfifo {}", path.display()));
    }
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .with_context(|| format!("open {}", path.display()))
}

/// One shim start as containerd 1.6-2.2 does it (`SHIM -namespace NS
/// -address A -publish-binary containerd -id ID start` in a bundle whose
/// spec it reads), timed until the started shim answers Connect on the
/// address it printed; ms. The shim is then shut down and waited for.
fn one_shim_start(
    cd: &Containerd,
    rt: &tokio::runtime::Runtime,
    handler: &str,
    work: &Path,
    i: usize,
) -> Result<f64> {
    let id = format!("start-{handler}-{i}");
    let bundle = work.join(&id);
    std::fs::DirBuilder::new().mode(0o700).create(&bundle)?;
    std::fs::write(bundle.join("config.json"), r#"{"ociVersion":"1.0.2"}"#)?;
    let _log = log_fifo(&bundle.join("log"))?;
    let t0 = Instant::now();
    let out = sys::run_with_timeout(
        Command::new(shim_bin(cd, handler))
            .args(["-namespace", &cd.tag, "-address", &cd.address()])
            .arg("-publish-binary")
            .arg(&cd.containerd_bin)
            .args(["-id", &id, "start"])
            .env("TTRPC_ADDRESS", format!("{}.ttrpc", cd.address()))
            .current_dir(&bundle),
        Duration::from_secs(20),
    )?;
    let address = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || address.is_empty() {
        bail!(
            "{handler} shim start failed ({}): {address} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    cd.track_socket(Path::new(address.trim_start_matches("unix://")));
    let ctx = || ttrpc::context::with_timeout(Duration::from_secs(10).as_nanos() as i64);
    let (ms, shim_pid) = rt.block_on(async {
        let client = Client::connect(&address)
            .await
            .map_err(|e| anyhow!("connect {address}: {e}"))?;
        let task = TaskClient::new(client);
        let req = ConnectRequest {
            id: id.clone(),
            ..Default::default()
        };
        let r = task
            .connect(ctx(), &req)
            .await
            .map_err(|e| anyhow!("Connect to the {handler} shim: {e}"))?;
        let ms = t0.elapsed().as_secs_f64() * 1000.0;
        let req = ShutdownRequest {
            id: id.clone(),
            now: true,
            ..Default::default()
        };
        // The shim may exit before its answer is read: its exit is what counts.
        let _ = task.shutdown(ctx(), &req).await;
        anyhow::Ok((ms, r.shim_pid as i32))
    })?;
    if !sys::wait_gone(&[shim_pid], Duration::from_secs(10)) {
        bail!("{handler} shim {shim_pid} still runs after Shutdown");
    }
    std::fs::remove_dir_all(&bundle).with_context(|| format!("remove {}", bundle.display()))?;
    Ok(ms)
}

/// Indices `0..n`, reversed in odd iterations `i`: which handler goes
/// first alternates.
fn alternating(i: usize, n: usize) -> impl Iterator<Item = usize> {
    (0..n).map(move |k| if i.is_multiple_of(2) { k } else { n - 1 - k })
}

/// A row of the table: its name, its figure of one handler's results, and
/// the decimals shown.
type Row = (String, Box<dyn Fn(&Result1) -> f64>, usize);

/// The rows of `what` (RSS or PSS, as `kib` picks it): a pod with 1
/// container, with `n`, and the growth per extra container.
fn footprint_rows(what: &str, kib: fn(&Footprint) -> u64, n: usize) -> [Row; 3] {
    [
        (
            format!("shim {what}, pod with 1 container (MiB)"),
            Box::new(move |r: &Result1| kib(&r.one) as f64 / 1024.0),
            2,
        ),
        (
            format!("shim {what}, pod with {n} containers (MiB)"),
            Box::new(move |r: &Result1| kib(&r.many) as f64 / 1024.0),
            2,
        ),
        (
            format!("{what} per extra container (KiB)"),
            Box::new(move |r: &Result1| {
                (kib(&r.many) as f64 - kib(&r.one) as f64) / (n.max(2) - 1) as f64
            }),
            0,
        ),
    ]
}

/// The p50 and the p99 row of the times (ms) that `ms` picks.
fn quantile_rows(
    p50: String,
    p99: String,
    ms: fn(&Result1) -> &[f64],
    decimals: usize,
) -> [Row; 2] {
    [
        (
            p50,
            Box::new(move |r: &Result1| quantile(ms(r), 0.5)),
            decimals,
        ),
        (
            p99,
            Box::new(move |r: &Result1| quantile(ms(r), 0.99)),
            decimals,
        ),
    ]
}

fn run(args: &Args) -> Result<()> {
    report::require_shim_built(args.handlers.iter().map(String::as_str))?;
    let load_before = report::loadavg();
    eprintln!(
        "measuring the floor: {} runc create/start/wait/delete cycles, no containerd ...",
        args.iterations
    );
    let floor_ms = measure_runc_floor(args.iterations)?;
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
        for k in alternating(i, pods.len()) {
            let (ms, exited) = one_cycle(&cd, &pods[k], i)?;
            results[k].cycle_ms.push(ms);
            results[k].exited_ms.push(exited);
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
        for k in alternating(i, args.handlers.len()) {
            let ms = one_pod_cycle(&cd, &args.handlers[k], i)?;
            results[k].pod_ms.push(ms);
        }
    }
    eprintln!("measuring {} shim starts per handler ...", args.iterations);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let work = cd.dir.join("shim-start");
    std::fs::DirBuilder::new().mode(0o700).create(&work)?;
    for h in &args.handlers {
        one_shim_start(&cd, &rt, h, &work, 0)?;
    }
    for i in 1..=args.iterations {
        for k in alternating(i, args.handlers.len()) {
            let ms = one_shim_start(&cd, &rt, &args.handlers[k], &work, i)?;
            results[k].shim_start_ms.push(ms);
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
    eprintln!("counting the runc processes of a container cycle and a pod cycle ...");
    count_runc_calls(&args.handlers, &mut results)?;

    println!(
        "\ncontainerd {}, {} iterations, {} CPUs; load average (1, 5, 15 min) {load_before} before, {} after\n",
        v.runtime_version,
        args.iterations,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        report::loadavg()
    );
    let n = args.containers;
    let listed = args.list_pods * args.list_per_pod;
    let mut rows: Vec<Row> = Vec::new();
    rows.extend(footprint_rows("RSS", |f| f.rss_kib, n));
    rows.extend(footprint_rows("PSS", |f| f.pss_kib, n));
    rows.push((
        "shim threads, pod with 1 container".into(),
        Box::new(|r: &Result1| r.one.threads as f64),
        0,
    ));
    rows.push((
        format!("shim threads, pod with {n} containers"),
        Box::new(|r: &Result1| r.many.threads as f64),
        0,
    ));
    rows.push((
        "shim processes per pod".into(),
        Box::new(|r: &Result1| r.many.shims as f64),
        0,
    ));
    rows.extend(quantile_rows(
        "container create→start→exit→remove, p50 (ms)".into(),
        "container create→start→exit→remove, p99 (ms)".into(),
        |r| &r.cycle_ms,
        1,
    ));
    rows.extend(quantile_rows(
        "exit→EXITED seen (StartContainer returned→EXITED), p50 (ms)".into(),
        "exit→EXITED seen, p99 (ms)".into(),
        |r| &r.exited_ms,
        1,
    ));
    rows.extend(quantile_rows(
        "pod run→stop→remove, p50 (ms)".into(),
        "pod run→stop→remove, p99 (ms)".into(),
        |r| &r.pod_ms,
        1,
    ));
    rows.extend(quantile_rows(
        "shim start→first answer (Connect), p50 (ms)".into(),
        "shim start→first answer (Connect), p99 (ms)".into(),
        |r| &r.shim_start_ms,
        1,
    ));
    if listed > 0 {
        rows.extend(quantile_rows(
            format!("ListContainers, {listed} containers, p50 (ms)"),
            format!("ListContainers, {listed} containers, p99 (ms)"),
            |r| &r.list_ms,
            2,
        ));
    }
    rows.push((
        "runc processes per container cycle".into(),
        Box::new(|r: &Result1| r.runc_per_cycle.0.len() as f64),
        0,
    ));
    rows.push((
        "runc processes per pod cycle".into(),
        Box::new(|r: &Result1| r.runc_per_pod.0.len() as f64),
        0,
    ));
    let [header, separator] = report::comparison_header("metric", &args.handlers);
    println!("{header}\n{separator}");
    for (name, f, prec) in rows {
        let vals: Vec<f64> = results.iter().map(&f).collect();
        let mut cells = vec![name];
        cells.extend(vals.iter().map(|v| format!("{v:.prec$}")));
        if let [a, b] = vals[..] {
            cells.push(report::ratio(a, b, 2));
        }
        println!("{}", report::row(cells));
    }
    println!();
    let floor50 = quantile(&floor_ms, 0.5);
    println!(
        "the floor, runc alone (create→start→wait→delete of busybox true, no containerd): p50 {floor50:.1} ms, p99 {:.1} ms",
        quantile(&floor_ms, 0.99)
    );
    let own: Vec<f64> = results
        .iter()
        .map(|r| quantile(&r.cycle_ms, 0.5) - floor50)
        .collect();
    for (h, o) in args.handlers.iter().zip(&own) {
        println!("container cycle p50 above the floor, {h}: {o:.1} ms");
    }
    if let [a, b] = own[..] {
        println!(
            "above the floor, {} / {}: {}",
            args.handlers[1],
            args.handlers[0],
            report::ratio(a, b, 2)
        );
    }
    println!();
    for (h, r) in args.handlers.iter().zip(&results) {
        println!(
            "runc calls of {h}: container cycle {}; pod cycle {}",
            r.runc_per_cycle.0.join(" "),
            r.runc_per_pod.0.join(" ")
        );
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
