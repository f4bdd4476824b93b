//! The cgroup v2 + systemd lane: boot the Debian 12 guest of
//! `scripts/vm/build-image.sh` under QEMU (TCG), run the integration tests in
//! it against containerd 1.6.20 (the guest's) and the host-built 2.3.4, with
//! the systemd cgroup driver, then again with crun for the groups of
//! [`CRUN_GROUPS`], and bring the logs back.
//!
//!   sudo ./scripts/test-vm.sh [FLAGS]      (or: cargo run --release -p brisk-integration --bin brisk-vm -- FLAGS)
//!
//! Exits 0 only when every group passed. qemu never outlives this process:
//! it is killed by its pid after `--timeout-min`, on SIGINT/SIGTERM/SIGHUP,
//! and by the kernel (PDEATHSIG) when this process dies.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;

use brisk_integration::containerd::{brisk_shim_bin, ensure_images, images_dir, workspace_root};
use brisk_integration::vm::{self, Ended, Group, Guest, Image, Job, Machine, Share};

/// Test groups, in the order they run, with the test binary and filter of each.
const GROUPS: &[(&str, &str, &[&str])] = &[
    ("lifecycle", "e2e", &["lifecycle::"]),
    ("exiting", "e2e", &["exiting::"]),
    // brisk's features under every release and runtime; the stock shim's
    // twins ([`STOCK_FEATURES`]) once.
    (
        "features",
        "e2e",
        &[
            "features::brisk::",
            "features::runtime_handler_features_match_runc",
        ],
    ),
    (STOCK_FEATURES, "e2e", &["features::runc::"]),
    ("shim_kill", "e2e", &["shim_kill::"]),
    ("restart", "e2e", &["restart::"]),
    // Stats and OOM kills on cgroup v2 (issue 12's figures).
    ("cgroups", "e2e", &["cgroups::"]),
    (
        "selected_binaries",
        "deploy",
        &["--exact", "selected_binaries_serve_the_pods"],
    ),
];
/// The crun lane: the groups whose tests cover every lifecycle, exec, tty,
/// update, pause and OOM scenario, run again with Debian's crun under both
/// shims (`BRISK_OCI_RUNTIME=crun`: brisk by `runc_binary = "crun"`, the
/// stock shim and plain `ctr run` by a `runc` link to it). Its own lane
/// because crun 1.8 refuses the host's hybrid cgroup layout.
///
/// Not `exiting`: its fault is `strace -f -p SHIM`, which traces every
/// runtime process the shim starts. Each crun so traced made the guest's
/// strace 5.22 print "dispatch_event: pid N has delayed wait data set
/// already", and the test made no progress for minutes; the shim's unmount
/// path does not depend on the runtime.
const CRUN_GROUPS: &[&str] = &["lifecycle", "features", "cgroups"];
/// The suffix of a crun group's name (`lifecycle+crun`).
const CRUN_SUFFIX: &str = "+crun";
/// The stock shim's feature scenarios, the baseline brisk's are held
/// against: run under the guest's own containerd with runc only. The
/// host's compatibility matrix runs them under every release, and each
/// costs about 10 s of TCG time, which the test command's budget has not
/// got for every release and runtime.
const STOCK_FEATURES: &str = "features_stock";
/// Not a test: `brisk-bench` in the guest (`--bench-arg`), per release and,
/// as `bench+crun`, with crun: issue 17's brisk+crun figures, which this
/// host's hybrid cgroups keep crun from giving. Never in the default set.
const BENCH_GROUP: &str = "bench";
/// Runs once (not per release): the .deb under Debian's containerd.service.
const UNIT_GROUP: &str = "systemd_unit";
/// The guest's own containerd.
const GUEST_RELEASE: &str = "1.6.20";

#[derive(Parser, Debug)]
#[command(about = "Run the integration tests in a cgroup v2 + systemd guest (QEMU TCG)")]
struct Args {
    /// Where the guest image is cached (scripts/vm/build-image.sh).
    #[arg(long)]
    vm_dir: Option<PathBuf>,
    /// Results directory (emptied first); default VM_DIR/results.
    #[arg(long)]
    results: Option<PathBuf>,
    /// containerd releases to test: 1.6.20 (the guest's) and releases found
    /// as VERSIONS_DIR/containerd-X/usr/bin/containerd.
    #[arg(long, value_delimiter = ',', default_value = "1.6.20,2.3.4")]
    containerd: Vec<String>,
    /// Where the host-built containerd releases are.
    #[arg(long, env = "BRISK_CONTAINERD_VERSIONS_DIR")]
    versions_dir: Option<PathBuf>,
    /// Fail (instead of skipping) when a release is not built.
    #[arg(long, env = "BRISK_REQUIRE_CONTAINERD_VERSIONS", value_parser = clap::builder::BoolishValueParser::new(), default_value = "false")]
    require_releases: bool,
    /// Test groups to run: lifecycle, exiting, features, shim_kill,
    /// restart, cgroups, selected_binaries (each per release),
    /// features_stock and systemd_unit (once, under the guest's 1.6.20),
    /// and lifecycle+crun, features+crun, cgroups+crun (each per release
    /// of --crun-containerd).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "lifecycle,exiting,features,features_stock,shim_kill,restart,cgroups,selected_binaries,systemd_unit,lifecycle+crun,features+crun,cgroups+crun"
    )]
    groups: Vec<String>,
    /// containerd releases that run the crun groups; empty for none. Only
    /// releases of --containerd count. Debian 12's crun (1.8.1) runs only
    /// specs whose ociVersion contains "1.0", which containerd 2.x's
    /// (2.3.4: "1.3.0") do not: under 2.x every create fails with crun's
    /// "unknown version specified", under the stock shim as under brisk.
    #[arg(long, value_delimiter = ',', default_value = "1.6.20")]
    crun_containerd: Vec<String>,
    /// Extra libtest arguments for every e2e/deploy group (e.g. a filter).
    #[arg(long, allow_hyphen_values = true)]
    test_arg: Vec<String>,
    /// brisk-bench's arguments in the bench groups.
    #[arg(
        long,
        allow_hyphen_values = true,
        default_values_t = ["--iterations".to_string(), "20".to_string(), "--list-pods".to_string(), "0".to_string()]
    )]
    bench_arg: Vec<String>,
    /// vCPUs of the guest (TCG: one host thread each).
    #[arg(long, default_value_t = 2)]
    smp: u32,
    /// Guest memory, MiB.
    #[arg(long, default_value_t = 3072)]
    memory_mib: u32,
    /// Hard limit of the whole guest run (boot to power-off), minutes.
    #[arg(long, default_value_t = 75)]
    timeout_min: u64,
    /// Limit of one test group in the guest, minutes.
    #[arg(long, default_value_t = 20)]
    group_timeout_min: u64,
    /// The qemu binary.
    #[arg(long, default_value = "qemu-system-x86_64")]
    qemu: PathBuf,
}

fn main() {
    match run() {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("brisk-vm: {e:#}");
            std::process::exit(2);
        }
    }
}

fn run() -> Result<i32> {
    let args = Args::parse();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("needs root (debootstrap, qemu's 9p passthrough of root-owned files)");
    }
    let ws = workspace_root();
    let vm_dir = args.vm_dir.clone().unwrap_or_else(|| ws.join("target/vm"));
    let results = args
        .results
        .clone()
        .unwrap_or_else(|| vm_dir.join("results"));
    let versions = args
        .versions_dir
        .clone()
        .unwrap_or_else(|| ws.join("target/containerd-versions"));
    let known: BTreeSet<String> = GROUPS
        .iter()
        .map(|g| g.0.to_string())
        .chain(CRUN_GROUPS.iter().map(|g| format!("{g}{CRUN_SUFFIX}")))
        .chain([UNIT_GROUP.to_string(), BENCH_GROUP.to_string()])
        .chain([format!("{BENCH_GROUP}{CRUN_SUFFIX}")])
        .collect();
    for g in &args.groups {
        if !known.contains(g) {
            bail!("unknown group {g:?} (known: {known:?})");
        }
    }
    let want = |g: &str| args.groups.iter().any(|x| x == g);

    let stop = Arc::new(AtomicBool::new(false));
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        signal_hook::flag::register(sig, stop.clone()).context("signal handler")?;
    }

    let t0 = Instant::now();
    eprintln!("brisk-vm: == guest image (scripts/vm/build-image.sh)");
    let image = Image::build(&ws, &vm_dir)?;
    let image_secs = t0.elapsed().as_secs_f64();

    // The releases: the guest's own, and the host-built ones.
    let mut releases: Vec<(String, Option<PathBuf>)> = Vec::new();
    for r in &args.containerd {
        if r == GUEST_RELEASE {
            releases.push((r.clone(), None));
            continue;
        }
        let bin = versions.join(format!("containerd-{r}/usr/bin/containerd"));
        if bin.is_file() {
            releases.push((r.clone(), Some(bin)));
        } else if args.require_releases {
            bail!("containerd {r}: {} is not built", bin.display());
        } else {
            eprintln!(
                "brisk-vm: containerd {r}: {} not built: SKIPPED (the containerd build script makes it; BRISK_REQUIRE_CONTAINERD_VERSIONS=1 makes this an error)",
                bin.display()
            );
        }
    }

    let t1 = Instant::now();
    eprintln!("brisk-vm: == test executables and the shim (cargo, release)");
    let tests: Vec<&str> = {
        let mut t: Vec<&str> = GROUPS
            .iter()
            .filter(|g| want(g.0) || want(&format!("{}{CRUN_SUFFIX}", g.0)))
            .map(|g| g.1)
            .collect();
        if want(UNIT_GROUP) {
            t.push(UNIT_GROUP);
        }
        t.sort_unstable();
        t.dedup();
        t
    };
    let exes = vm::build_test_executables(&ws, &tests)?;
    let deb = if want(UNIT_GROUP) {
        Some(build_deb(&ws)?)
    } else {
        // The shim, and brisk-bench for the bench groups.
        let st = std::process::Command::new("cargo")
            .current_dir(&ws)
            .args(["build", "--release", "--workspace"])
            .status()?;
        if !st.success() {
            bail!("cargo build --release --workspace failed");
        }
        None
    };
    let shim = brisk_shim_bin();
    if !shim.is_file() {
        bail!("no shim binary at {}", shim.display());
    }
    let (bb, _) = ensure_images()?;
    // The guest sees the host's files at the same paths: the workspace,
    // and what lies outside it.
    let mut needed: Vec<PathBuf> = vec![dir_of(&shim), dir_of(&bb)];
    needed.extend(shim.parent().map(Path::to_path_buf));
    needed.extend(
        releases
            .iter()
            .filter_map(|(_, b)| b.as_deref().map(release_tree)),
    );
    needed.extend(deb.iter().map(|d| dir_of(d)));
    needed.extend(exes.values().map(|e| dir_of(e)));
    let ro_shares = vm::readonly_shares(&ws, &needed);
    let build_secs = t1.elapsed().as_secs_f64();

    // The job.
    let group_timeout = Duration::from_secs(args.group_timeout_min * 60);
    let mut groups = Vec::new();
    for (release, bin) in &releases {
        let env: Vec<(String, String)> = bin
            .iter()
            .map(|b| {
                (
                    "BRISK_CONTAINERD_BIN".into(),
                    b.to_string_lossy().into_owned(),
                )
            })
            .collect();
        let crun = args.crun_containerd.iter().any(|r| r == release);
        let runtimes: &[bool] = if crun { &[false, true] } else { &[false] };
        for &on_crun in runtimes {
            for (name, test, filter) in GROUPS {
                if *name == STOCK_FEATURES && (on_crun || release != GUEST_RELEASE) {
                    continue;
                }
                let group = if on_crun {
                    format!("{name}{CRUN_SUFFIX}")
                } else {
                    name.to_string()
                };
                if !want(&group) {
                    continue;
                }
                let mut a = libtest_args();
                a.extend(filter.iter().map(|s| s.to_string()));
                a.extend(args.test_arg.iter().cloned());
                let mut env = env.clone();
                if on_crun {
                    env.push(("BRISK_OCI_RUNTIME".into(), "crun".into()));
                }
                groups.push(Group {
                    release: release.clone(),
                    name: group,
                    executable: exes[*test].clone(),
                    args: a,
                    env,
                    timeout: group_timeout,
                });
            }
            let bench = if on_crun {
                format!("{BENCH_GROUP}{CRUN_SUFFIX}")
            } else {
                BENCH_GROUP.to_string()
            };
            if want(&bench) {
                let mut env = env.clone();
                if on_crun {
                    env.push(("BRISK_OCI_RUNTIME".into(), "crun".into()));
                }
                groups.push(Group {
                    release: release.clone(),
                    name: bench,
                    executable: dir_of(&shim).join("brisk-bench"),
                    args: args.bench_arg.clone(),
                    env,
                    timeout: group_timeout,
                });
            }
        }
    }
    if let Some(deb) = &deb {
        groups.push(Group {
            release: GUEST_RELEASE.into(),
            name: UNIT_GROUP.into(),
            executable: exes[UNIT_GROUP].clone(),
            args: libtest_args(),
            env: vec![("BRISK_DEB".into(), deb.to_string_lossy().into_owned())],
            timeout: group_timeout,
        });
    }
    if groups.is_empty() {
        bail!("nothing to run");
    }
    let job = Job {
        mounts: ro_shares
            .iter()
            .map(|s| (s.tag.clone(), s.host.clone()))
            .collect(),
        env: vec![
            ("HOME".into(), "/root".into()),
            ("TMPDIR".into(), "/tmp".into()),
            // libtest's --report-time is unstable.
            ("RUSTC_BOOTSTRAP".into(), "1".into()),
            ("BRISK_CGROUP_DRIVER".into(), "systemd".into()),
            // Debug logs of containerd and the shims, when asked for.
            (
                "BRISK_CONTAINERD_DEBUG".into(),
                std::env::var("BRISK_CONTAINERD_DEBUG").unwrap_or_default(),
            ),
            ("BRISK_SHIM_BIN".into(), shim.to_string_lossy().into_owned()),
            (
                "BRISK_IMAGES_DIR".into(),
                images_dir().to_string_lossy().into_owned(),
            ),
        ],
        groups: groups.clone(),
    };
    reset_dir(&results)?;
    fs::write(results.join("job.sh"), job.script())?;

    let machine = Machine {
        qemu: args.qemu.clone(),
        image,
        smp: args.smp,
        memory_mib: args.memory_mib,
        shares: ro_shares
            .into_iter()
            .chain([Share {
                tag: vm::RESULTS_TAG.into(),
                host: results.clone(),
                readonly: false,
            }])
            .collect(),
        console_log: results.join("console.log"),
        qemu_log: results.join("qemu.log"),
    };
    eprintln!(
        "brisk-vm: == boot (-smp {} -m {}M, {} groups, hard limit {} min; results in {})",
        args.smp,
        args.memory_mib,
        groups.len(),
        args.timeout_min,
        results.display()
    );
    let mut guest = Guest::boot(&machine)?;
    eprintln!("brisk-vm: qemu pid {}", guest.pid().unwrap_or(0));
    let deadline = Instant::now() + Duration::from_secs(args.timeout_min * 60);
    let mut reported = 0;
    let mut booted = false;
    let ended = guest.wait(deadline, &stop, || {
        if !booted {
            if let Ok(s) = fs::read_to_string(results.join("boot-seconds")) {
                booted = true;
                eprintln!(
                    "brisk-vm: guest up after {:.0} s (guest uptime {} s at the job's start)",
                    guest_elapsed(t0, image_secs + build_secs),
                    s.trim()
                );
            }
        }
        let done = vm::read_results(&results);
        for r in done.iter().skip(reported) {
            eprintln!(
                "brisk-vm: {} {}: {} in {:.0} s ({} passed, {} failed{})",
                r.release,
                r.group,
                if r.exit_code == 0 { "ok" } else { "FAILED" },
                r.seconds,
                r.passed.len(),
                r.failed.len(),
                if r.failed.is_empty() {
                    String::new()
                } else {
                    format!(": {}", r.failed.join(", "))
                }
            );
        }
        reported = done.len();
    })?;
    let vm_secs = guest.started.elapsed().as_secs_f64();
    drop(guest);

    let exit_code = fs::read_to_string(results.join("exit-code"))
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok());
    let done = vm::read_results(&results);
    print_report(&done, &groups, &results);
    println!(
        "\ntimes: image {image_secs:.0} s, host builds {build_secs:.0} s, guest (boot to power-off) {vm_secs:.0} s, total {:.0} s",
        t0.elapsed().as_secs_f64()
    );
    let problem = match ended {
        Ended::Exited(st) if exit_code.is_some() => {
            if !st.success() {
                eprintln!("brisk-vm: qemu exited with {st} after the job had finished");
            }
            None
        }
        Ended::Exited(st) => Some(format!(
            "qemu exited ({st}) before the job finished (qemu log: {}):\n{}",
            results.join("qemu.log").display(),
            brisk_integration::sys::tail_file(&results.join("console.log"), 40)
        )),
        Ended::TimedOut => Some(format!(
            "hard timeout: the guest ran {} min; qemu killed. Console tail:\n{}",
            args.timeout_min,
            brisk_integration::sys::tail_file(&results.join("console.log"), 40)
        )),
        Ended::Stopped => Some("stopped by a signal; qemu killed".into()),
    };
    if let Some(p) = problem {
        eprintln!("brisk-vm: {p}");
        return Ok(if matches!(ended, Ended::Stopped) {
            130
        } else {
            1
        });
    }
    let all_ran = done.len() == groups.len();
    if !all_ran {
        eprintln!(
            "brisk-vm: only {} of {} groups reported",
            done.len(),
            groups.len()
        );
    }
    Ok(if exit_code == Some(0) && all_ran {
        0
    } else {
        1
    })
}

/// What every group gives libtest: one test at a time (each starts its own
/// containerd), with the time of each test in the log.
fn libtest_args() -> Vec<String> {
    [
        "--test-threads=1",
        "-Z",
        "unstable-options",
        "--report-time",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn dir_of(p: &Path) -> PathBuf {
    fs::canonicalize(p)
        .unwrap_or_else(|_| p.to_path_buf())
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"))
}

/// `TREE` of `TREE/usr/bin/containerd`.
fn release_tree(bin: &Path) -> PathBuf {
    bin.ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| dir_of(bin))
}

fn guest_elapsed(t0: Instant, before: f64) -> f64 {
    t0.elapsed().as_secs_f64() - before
}

/// scripts/build-deb.sh, which prints the package's path last.
fn build_deb(ws: &Path) -> Result<PathBuf> {
    let out = std::process::Command::new("bash")
        .arg(ws.join("scripts/build-deb.sh"))
        .stderr(std::process::Stdio::null())
        .output()
        .context("scripts/build-deb.sh")?;
    if !out.status.success() {
        bail!("scripts/build-deb.sh failed ({})", out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let deb = PathBuf::from(text.lines().last().unwrap_or("").trim());
    if !deb.is_file() {
        bail!("scripts/build-deb.sh printed no package: {text:?}");
    }
    Ok(deb)
}

/// Empty `dir` (it holds only what an earlier run of this driver left).
fn reset_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("rm -r {}", dir.display()))?;
    }
    fs::create_dir_all(dir).with_context(|| format!("mkdir {}", dir.display()))?;
    Ok(())
}

fn print_report(done: &[vm::GroupResult], groups: &[Group], results: &Path) {
    println!("\n| containerd | group | result | passed | failed | time |");
    println!("|---|---|---|---|---|---|");
    for g in groups {
        match done
            .iter()
            .find(|r| r.release == g.release && r.group == g.name)
        {
            Some(r) => println!(
                "| {} | {} | {} | {} | {} | {:.0} s |",
                r.release,
                r.group,
                match r.exit_code {
                    0 => "pass".to_string(),
                    124 | 137 => format!("TIMEOUT (exit {})", r.exit_code),
                    c => format!("FAIL (exit {c})"),
                },
                r.passed.len(),
                if r.failed.is_empty() {
                    "0".to_string()
                } else {
                    r.failed.join(", ")
                },
                r.seconds
            ),
            None => println!("| {} | {} | did not run | | | |", g.release, g.name),
        }
    }
    println!("\nper test (guest seconds):");
    for r in done {
        let log = fs::read_to_string(results.join(&r.release).join(format!("{}.log", r.group)))
            .unwrap_or_default();
        for (name, secs) in vm::test_times(&log) {
            println!("  {:>7.1}  {} {}", secs, r.release, name);
        }
    }
    println!(
        "\nlogs: {}/<containerd>/<group>.log, console.log, journal.log",
        results.display()
    );
}
