//! `brisk-ctl` end to end, as an operator runs it on a node: a private
//! containerd whose `runc` handler uses the stock shim gets brisk installed,
//! swapped in as a canary (`enable --canary`, which really restarts that
//! containerd and probes), swapped back (`rollback`) and removed
//! (`uninstall`), while pods started before each step keep running on the
//! shim they started with and are stopped and removed normally afterwards.
//! A failed probe must roll back by itself.
//!
//! containerd is restarted through the harness's restart hook
//! ([`Containerd::restart_hook`]), so the harness keeps owning it and cleans
//! it up even after a panic.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use brisk_integration::containerd::{BRISK_RUNTIME_TYPE, BRISK_SHIM_NAME, RUNC_STATE_ROOTS};
use brisk_integration::cri::{ContainerState, BUSYBOX_IMAGE};
use brisk_integration::{brisk_shim_bin, sys, ContainerSpec, Containerd, Options, RUNC_HANDLER};

const STOCK_RUNTIME_TYPE: &str = "io.containerd.runc.v2";
const STOCK_SHIM_NAME: &str = "containerd-shim-runc-v2";
/// One brisk-ctl command, restarts included.
const CTL_TIMEOUT: Duration = Duration::from_secs(90);

/// The brisk-ctl binary: `$BRISK_CTL_BIN`, else the one built next to the shim.
fn ctl_bin() -> PathBuf {
    match std::env::var_os("BRISK_CTL_BIN") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => brisk_shim_bin().with_file_name("brisk-ctl"),
    }
}

/// A private containerd as a node before brisk: handler `runc` on the stock
/// shim, no brisk anywhere. None when integration tests cannot run here.
fn node_before_brisk() -> Option<Containerd> {
    if !brisk_integration::integration_enabled() {
        return None;
    }
    brisk_integration::require_brisk();
    assert!(
        ctl_bin().is_file(),
        "{} is missing: run `cargo build --release -p brisk-shim` or set BRISK_CTL_BIN",
        ctl_bin().display()
    );
    let opts = Options {
        without_brisk: true,
        ..Options::default()
    };
    Some(Containerd::start_with(opts).expect("start private containerd"))
}

/// Operator's view of the node: brisk-ctl with every path pointed at the
/// private containerd.
struct Operator {
    brisk_toml: PathBuf,
    restart_cmd: String,
}

/// What one brisk-ctl command did.
struct Run {
    output: Output,
    /// containerd restarts it asked for.
    restarts: usize,
}

impl Run {
    fn ok(&self) -> bool {
        self.output.status.success()
    }
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }
    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }
    /// Panic, with its output, unless it succeeded.
    fn expect_ok(self, what: &str) -> Run {
        assert!(
            self.ok(),
            "brisk-ctl {what} failed ({}):\n{}{}",
            self.output.status,
            self.stdout(),
            self.stderr()
        );
        self
    }
}

impl Operator {
    fn new(cd: &Containerd) -> Operator {
        Operator {
            brisk_toml: cd.dir.join("brisk-ctl.toml"),
            restart_cmd: cd.restart_hook().expect("restart hook"),
        }
    }

    fn command(&self, cd: &Containerd, args: &[&str]) -> Command {
        let mut cmd = Command::new(ctl_bin());
        cmd.arg("--config")
            .arg(cd.config_path())
            .arg("--brisk-toml")
            .arg(&self.brisk_toml)
            .arg("--bin-dir")
            .arg(cd.bin_dir())
            .arg("--address")
            .arg(&cd.socket)
            .arg("--restart-cmd")
            .arg(&self.restart_cmd)
            .arg("--containerd")
            .arg(&cd.containerd_bin)
            .arg("--ctr")
            .arg(&cd.ctr_bin)
            .args(args);
        cmd
    }

    /// Run `brisk-ctl ARGS`, restarting containerd when it asks to.
    fn run(&self, cd: &mut Containerd, args: &[&str]) -> Run {
        self.run_with_path(cd, args, None)
    }

    /// [`Operator::run`] with `dir` at the front of brisk-ctl's PATH.
    fn run_with_path(&self, cd: &mut Containerd, args: &[&str], dir: Option<&Path>) -> Run {
        let mut cmd = self.command(cd, args);
        if let Some(dir) = dir {
            let path = std::env::var("PATH").unwrap_or_default();
            cmd.env("PATH", format!("{}:{path}", dir.display()));
        }
        let (output, restarts) = cd
            .run_serving_restarts(&mut cmd, CTL_TIMEOUT)
            .unwrap_or_else(|e| panic!("brisk-ctl {args:?}: {e:#}"));
        eprintln!(
            "brisk-ctl {} -> {} ({restarts} restarts)\n{}{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        Run { output, restarts }
    }

    /// `enable --canary`, probing with `probe_image` (None: brisk-ctl's
    /// default, CRI's sandbox image, here the local pause image).
    fn enable_canary(&self, cd: &mut Containerd, probe_image: Option<&str>) -> Run {
        let mut args = vec!["enable", "--canary"];
        if let Some(image) = probe_image {
            args.extend(["--probe-image", image]);
        }
        self.run(cd, &args)
    }
}

/// The executable of the long-running shim that serves pod `pod_id`.
fn shim_exe_of_pod(cd: &Containerd, pod_id: &str) -> PathBuf {
    let pids: Vec<i32> = cd
        .shim_pids()
        .into_iter()
        .filter(|&p| {
            sys::cmdline(p)
                .map(|argv| argv.iter().any(|a| a == pod_id))
                .unwrap_or(false)
        })
        .collect();
    assert_eq!(pids.len(), 1, "one shim serves pod {pod_id}: {pids:?}");
    sys::exe(pids[0]).expect("shim executable")
}

fn assert_shim(cd: &Containerd, pod_id: &str, name: &str) {
    let exe = shim_exe_of_pod(cd, pod_id);
    assert_eq!(
        exe.file_name().and_then(|n| n.to_str()),
        Some(name),
        "pod {pod_id} is served by {}",
        exe.display()
    );
}

fn assert_running(cd: &Containerd, id: &str) {
    let st = cd.cri().container_status(id).expect("ContainerStatus");
    assert_eq!(
        ContainerState::try_from(st.state).ok(),
        Some(ContainerState::ContainerRunning),
        "container {id}: {st:?}"
    );
}

fn assert_exec_works(cd: &Containerd, id: &str) {
    let r = cd
        .cri()
        .exec_sync(id, &["echo", "alive"], Duration::from_secs(10))
        .expect("ExecSync");
    assert_eq!((r.exit_code, r.stdout_str().as_str()), (0, "alive\n"));
}

/// A pod on `handler` with one long-running container: (pod id, container id).
fn run_sleeper(cd: &Containerd, handler: &str, name: &str) -> (String, String) {
    let cri = cd.cri();
    let pod = cri.run_pod_sandbox(handler, name).expect("RunPodSandbox");
    let ctr = cri
        .run_container(&pod, &ContainerSpec::new("sleep", &["sleep", "1000"]))
        .expect("run container");
    (pod.id, ctr)
}

/// Stop and remove a container and its pod through CRI, as kubelet does.
fn remove_sleeper(cd: &Containerd, pod: &str, ctr: &str) {
    let cri = cd.cri();
    cri.stop_container(ctr, 2).expect("StopContainer");
    let st = cri.container_status(ctr).expect("ContainerStatus");
    assert_eq!(
        ContainerState::try_from(st.state).ok(),
        Some(ContainerState::ContainerExited),
        "{st:?}"
    );
    cri.remove_container(ctr).expect("RemoveContainer");
    cri.stop_pod(pod).expect("StopPodSandbox");
    cri.remove_pod(pod).expect("RemovePodSandbox");
}

/// The `status` row of container `id`: (runtime, task status).
fn status_row(run: &Run, id: &str) -> Option<(String, String)> {
    run.stdout().lines().find_map(|l| {
        let cols: Vec<&str> = l.split_whitespace().collect();
        (cols.len() >= 4 && cols[1] == id).then(|| (cols[2].to_string(), cols[3].to_string()))
    })
}

/// The probe container of `enable` left nothing: no container, no bundle,
/// no runc state.
fn assert_probe_gone(cd: &Containerd) {
    let containers = cd.ctr_in("k8s.io").containers().expect("ctr containers ls");
    assert!(
        !containers.iter().any(|c| c.starts_with("brisk-probe-")),
        "{containers:?}"
    );
    let bundles = cd.dir.join("state/io.containerd.runtime.v2.task/k8s.io");
    let roots = RUNC_STATE_ROOTS.iter().map(|r| Path::new(r).join("k8s.io"));
    for dir in roots.chain([bundles]) {
        for e in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            assert!(
                !name.starts_with("brisk-probe-"),
                "{} left",
                e.path().display()
            );
        }
    }
}

/// Cgroup controllers that hold a directory named like `top` at their root.
fn top_cgroups(top: &str) -> Vec<PathBuf> {
    sys::cgroup_roots()
        .into_iter()
        .map(|r| r.join(top))
        .filter(|p| p.exists())
        .collect()
}

/// install, enable --canary, status, new pods on brisk, rollback, new pods
/// on the stock shim again, uninstall refused then done; the pods started
/// before each swap keep running and are removed normally.
#[test]
fn canary_swap_and_back() {
    let Some(mut cd) = node_before_brisk() else {
        return;
    };
    let original = fs::read_to_string(cd.config_path()).unwrap();
    let shim = cd.bin_dir().join(BRISK_SHIM_NAME);
    // A probe without a cgroup of ours would land in /k8s.io.
    let k8s_cgroups = top_cgroups("k8s.io");

    // 1. Before brisk.
    let (old_pod, old_ctr) = run_sleeper(&cd, RUNC_HANDLER, "before");
    assert_shim(&cd, &old_pod, STOCK_SHIM_NAME);

    // 2. install (from next to brisk-ctl) and enable --canary.
    let op = Operator::new(&cd);
    let run = op.run(&mut cd, &["install"]).expect_ok("install");
    assert!(run.stdout().contains(&shim.display().to_string()));
    assert!(shim.is_file() && !shim.is_symlink());
    let run = op
        .enable_canary(&mut cd, Some(BUSYBOX_IMAGE))
        .expect_ok("enable --canary");
    assert_eq!(run.restarts, 1, "enable restarts containerd once");
    assert!(
        run.stdout().contains("ran under brisk") && run.stdout().contains("enabled"),
        "the probe ran: {}",
        run.stdout()
    );
    let enabled = fs::read_to_string(cd.config_path()).unwrap();
    assert!(enabled.contains(BRISK_RUNTIME_TYPE), "{enabled}");
    let brisk_toml = fs::read_to_string(&op.brisk_toml).expect("enable wrote brisk.toml");
    assert!(
        brisk_toml.contains("systemd_cgroup = false"),
        "runc options carried over: {brisk_toml}"
    );
    assert_eq!(top_cgroups("k8s.io"), k8s_cgroups, "the probe's cgroup");
    assert_probe_gone(&cd);

    // 3. status; new pods of handler runc run on brisk; the old one is fine.
    let run = op.run(&mut cd, &["status"]).expect_ok("status");
    assert_eq!(
        status_row(&run, &old_ctr),
        Some((STOCK_RUNTIME_TYPE.into(), "RUNNING".into())),
        "{}",
        run.stdout()
    );
    let (new_pod, new_ctr) = run_sleeper(&cd, RUNC_HANDLER, "canary");
    assert_eq!(shim_exe_of_pod(&cd, &new_pod), shim);
    let run = op.run(&mut cd, &["status"]).expect_ok("status");
    assert_eq!(
        status_row(&run, &new_ctr),
        Some((BRISK_RUNTIME_TYPE.into(), "RUNNING".into())),
        "{}",
        run.stdout()
    );
    assert_running(&cd, &old_ctr);
    assert_exec_works(&cd, &old_ctr);
    assert_shim(&cd, &old_pod, STOCK_SHIM_NAME);
    remove_sleeper(&cd, &old_pod, &old_ctr);

    // 4. rollback: the old config; the brisk pod keeps running; new pods on
    // the stock shim.
    let run = op.run(&mut cd, &["rollback"]).expect_ok("rollback");
    assert_eq!(run.restarts, 1, "rollback restarts containerd once");
    assert_eq!(fs::read_to_string(cd.config_path()).unwrap(), original);
    assert_running(&cd, &new_ctr);
    assert_exec_works(&cd, &new_ctr);
    assert_eq!(shim_exe_of_pod(&cd, &new_pod), shim);
    let (stock_pod, stock_ctr) = run_sleeper(&cd, RUNC_HANDLER, "after");
    assert_shim(&cd, &stock_pod, STOCK_SHIM_NAME);

    // 5. uninstall refuses while the brisk task runs, then removes the binary.
    let run = op.run(&mut cd, &["uninstall"]);
    assert!(!run.ok(), "uninstall must refuse: {}", run.stdout());
    assert!(
        run.stderr().contains("refusing") && run.stderr().contains(&new_ctr),
        "names the task: {}",
        run.stderr()
    );
    assert!(shim.is_file(), "the binary stays while brisk serves tasks");
    remove_sleeper(&cd, &new_pod, &new_ctr);
    remove_sleeper(&cd, &stock_pod, &stock_ctr);
    cd.assert_no_leaks();
    op.run(&mut cd, &["uninstall"]).expect_ok("uninstall");
    assert!(!shim.exists(), "uninstall removed {}", shim.display());
    cd.finish();
}

/// A probe that cannot run (its image does not exist, or brisk.toml is
/// wrong): enable rolls back by itself, and containerd runs with the
/// original config. Also: a shim file owned by a package is left to apt.
#[test]
fn failed_probe_rolls_back() {
    let Some(mut cd) = node_before_brisk() else {
        return;
    };
    let original = fs::read_to_string(cd.config_path()).unwrap();
    let op = Operator::new(&cd);
    op.run(&mut cd, &["install"]).expect_ok("install");
    let run = op.enable_canary(&mut cd, Some("example.invalid/brisk/no-such-image:1"));
    assert!(!run.ok(), "enable must fail: {}", run.stdout());
    assert!(
        run.stderr().contains("probe failed") && run.stderr().contains("rolled back"),
        "{}",
        run.stderr()
    );
    assert_eq!(run.restarts, 2, "restart with brisk, restart without");
    assert_eq!(fs::read_to_string(cd.config_path()).unwrap(), original);
    assert!(!backup_of(&cd.config_path()).exists(), "backup consumed");
    let (pod, ctr) = run_sleeper(&cd, RUNC_HANDLER, "after-failed-probe");
    assert_shim(&cd, &pod, STOCK_SHIM_NAME);
    remove_sleeper(&cd, &pod, &ctr);

    // A brisk.toml that the shim rejects (a misspelt key) fails the probe
    // too: it runs with the handler's ConfigPath, as the pods would. (The
    // probe image is the default one, the sandbox image.)
    fs::write(&op.brisk_toml, "volatil = true\n").unwrap();
    let run = op.enable_canary(&mut cd, None);
    assert!(!run.ok(), "enable must fail: {}", run.stdout());
    assert!(
        run.stderr().contains("volatil") && run.stderr().contains("rolled back"),
        "{}",
        run.stderr()
    );
    assert_eq!(fs::read_to_string(cd.config_path()).unwrap(), original);
    assert_probe_gone(&cd);

    package_owned_shim_is_left_to_apt(&mut cd, &op);
    op.run(&mut cd, &["uninstall"]).expect_ok("uninstall");
    cd.assert_no_leaks();
    cd.finish();
}

/// With a `dpkg-query` that says the Debian package `brisk` owns the
/// installed shim, `status` says so, and `install` and `uninstall` refuse
/// and point to apt.
fn package_owned_shim_is_left_to_apt(cd: &mut Containerd, op: &Operator) {
    let shim = cd.bin_dir().join(BRISK_SHIM_NAME);
    let fake = cd.dir.join("fake-dpkg");
    fs::create_dir_all(&fake).unwrap();
    let script = format!(
        "#!/bin/sh\n[ \"$1\" = -S ] && [ \"$2\" = '{0}' ] && {{ echo 'brisk: {0}'; exit 0; }}\n\
         echo \"dpkg-query: no path found matching pattern $2\" >&2\nexit 1\n",
        shim.display()
    );
    let query = fake.join("dpkg-query");
    fs::write(&query, script).unwrap();
    fs::set_permissions(&query, fs::Permissions::from_mode(0o755)).unwrap();

    let run = op
        .run_with_path(cd, &["status"], Some(&fake))
        .expect_ok("status");
    assert!(
        run.stdout()
            .contains(&format!("shim: {} (from package brisk)", shim.display())),
        "{}",
        run.stdout()
    );
    for cmd in ["uninstall", "install"] {
        let run = op.run_with_path(cd, &[cmd], Some(&fake));
        assert!(!run.ok(), "{cmd} must refuse a package's file");
        assert!(
            run.stderr().contains("Debian package brisk") && run.stderr().contains("apt-get"),
            "{cmd}: {}",
            run.stderr()
        );
        assert!(shim.is_file(), "{cmd} left the package's file alone");
    }
}

fn backup_of(config: &Path) -> PathBuf {
    let mut p = config.as_os_str().to_owned();
    p.push(".brisk-backup");
    PathBuf::from(p)
}

/// The body of an HTTP/1.0 GET of `/metrics` on 127.0.0.1:`port`, once
/// something answers there (within `within`).
fn get_metrics(port: u16, within: Duration) -> String {
    use std::io::{Read, Write};
    let deadline = std::time::Instant::now() + within;
    loop {
        let got = std::net::TcpStream::connect(("127.0.0.1", port)).and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")?;
            let mut text = String::new();
            s.read_to_string(&mut text)?;
            Ok(text)
        });
        match got {
            Ok(text) if text.contains("brisk_cri_list_containers_duration_seconds_count 1") => {
                return text;
            }
            _ if std::time::Instant::now() > deadline => {
                panic!("no probe figures on port {port} within {within:?}: {got:?}")
            }
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// `install --exporter` on a node without systemd as init (this one):
/// brisk-ctl beside the shim, the unit written 0644 with this install's
/// paths, and what its ExecStart runs serves /metrics with the CRI probe
/// on this containerd; `uninstall` removes the unit.
#[test]
fn install_exporter_writes_a_unit_whose_command_serves_metrics() {
    let Some(mut cd) = node_before_brisk() else {
        return;
    };
    let op = Operator::new(&cd);
    let units = cd.dir.join("systemd-units");
    let units_arg = units.to_str().unwrap().to_string();
    let run = op
        .run(
            &mut cd,
            &["install", "--exporter", "--unit-dir", &units_arg],
        )
        .expect_ok("install --exporter");
    assert!(
        run.stdout().contains("systemd does not run here"),
        "{}",
        run.stdout()
    );
    let unit = units.join("brisk-exporter.service");
    let meta = fs::metadata(&unit).expect("the unit");
    assert_eq!(meta.permissions().mode() & 0o7777, 0o644);
    let text = fs::read_to_string(&unit).unwrap();
    let exec: Vec<String> = text
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart")
        .split_whitespace()
        .map(String::from)
        .collect();
    let ctl = cd.bin_dir().join("brisk-ctl");
    assert_eq!(Path::new(&exec[0]), ctl, "{text}");
    assert!(fs::metadata(&ctl).unwrap().permissions().mode() & 0o111 != 0);
    assert_eq!(
        exec[1..3],
        ["--address".to_string(), cd.socket.display().to_string()]
    );

    // What systemd would start, on a port of our own.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let listen = exec.iter().position(|a| a == "--listen").expect("--listen");
    let mut args = exec[1..].to_vec();
    args[listen] = format!("127.0.0.1:{port}");
    let mut exporter = Command::new(&exec[0])
        .args(&args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("the unit's command");
    let text = std::panic::catch_unwind(|| get_metrics(port, Duration::from_secs(20)));
    sys::kill(exporter.id() as i32, libc::SIGTERM);
    let _ = exporter.wait();
    let text = text.expect("the exporter of the unit serves /metrics");
    assert!(text.contains("brisk_shims 0"), "{text}");

    op.run(&mut cd, &["uninstall", "--unit-dir", &units_arg])
        .expect_ok("uninstall");
    assert!(!unit.exists(), "uninstall removed {}", unit.display());
    cd.finish();
}
