//! The .deb on a node whose containerd runs as Debian's `containerd.service`
//! (`Type=notify`: systemd's `NOTIFY_SOCKET` is in containerd's environment
//! and so in every shim's), with brisk registered for a handler the way
//! `configs/containerd/v2-brisk.toml` says and the systemd cgroup driver: a
//! pod runs, then the package is purged and nothing of it is left.
//!
//! It takes the machine's containerd.service and /etc/containerd over, so it
//! runs only where `BRISK_DEB` names the package and systemd is init: the
//! cgroup v2 guest of `scripts/test-vm.sh`. Elsewhere it says so and passes.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use brisk_integration::containerd::{cri_scope_of, ensure_images, workspace_root};
use brisk_integration::cri::{ContainerState, BUSYBOX_IMAGE, PAUSE_IMAGE};
use brisk_integration::{sys, ContainerSpec, Cri, BRISK_HANDLER};

const SOCKET: &str = "/run/containerd/containerd.sock";
const CONFIG: &str = "/etc/containerd/config.toml";
const BRISK_TOML: &str = "/etc/containerd/brisk.toml";
const SHIM: &str = "/usr/bin/containerd-shim-brisk-v2";

fn run(cmd: &str, args: &[&str]) -> String {
    let out = sys::run_with_timeout(Command::new(cmd).args(args), Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{cmd} {args:?}: {e:#}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn unit_active(unit: &str) -> bool {
    sys::systemctl(&["is-active", "--quiet", unit])
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn package_installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

/// The node's state before the test, put back on drop (also after a panic):
/// the package purged, containerd stopped, its config files restored, our
/// slice stopped.
struct Node {
    pkg: String,
    saved: Vec<(PathBuf, Option<Vec<u8>>)>,
    slice: String,
    logs: PathBuf,
}

impl Node {
    fn take_over(pkg: &str, slice: &str) -> Self {
        assert!(
            !unit_active("containerd.service"),
            "containerd.service is running: this test takes it over, run it in the VM lane"
        );
        assert!(!package_installed(pkg), "{pkg} is installed already");
        let saved = [CONFIG, BRISK_TOML]
            .iter()
            .map(|p| (PathBuf::from(p), fs::read(p).ok()))
            .collect();
        let logs = std::env::temp_dir().join(format!("brisk-unit-{}", std::process::id()));
        let _ = fs::remove_dir_all(&logs);
        fs::create_dir_all(&logs).unwrap();
        Node {
            pkg: pkg.to_string(),
            saved,
            slice: slice.to_string(),
            logs,
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Ok(o) = sys::run_with_timeout(
                Command::new("journalctl").args(["-u", "containerd", "--no-pager", "-n", "80"]),
                Duration::from_secs(30),
            ) {
                eprintln!(
                    "--- journalctl -u containerd ---\n{}",
                    String::from_utf8_lossy(&o.stdout)
                );
            }
        }
        let _ = sys::systemctl(&["stop", "containerd.service"]);
        let _ = sys::systemctl(&["reset-failed", "containerd.service"]);
        let _ = sys::systemd_stop_units(std::slice::from_ref(&self.slice));
        if package_installed(&self.pkg) {
            let _ = Command::new("dpkg").args(["--purge", &self.pkg]).status();
        }
        for (p, content) in &self.saved {
            match content {
                Some(c) => {
                    let _ = fs::write(p, c);
                }
                None => {
                    let _ = fs::remove_file(p);
                }
            }
        }
        let _ = fs::remove_dir_all(&self.logs);
    }
}

/// The containerd config of the node: the CRI settings this guest needs (a
/// local sandbox image, no AppArmor, runc with the systemd driver) and the
/// operator's snippet pasted in as README says.
fn node_config() -> String {
    let snippet = fs::read_to_string(workspace_root().join("configs/containerd/v2-brisk.toml"))
        .expect("configs/containerd/v2-brisk.toml");
    let body: Vec<&str> = snippet
        .lines()
        .filter(|l| !l.trim_start().starts_with("version"))
        .collect();
    format!(
        r#"version = 2

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  disable_apparmor = true

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
  SystemdCgroup = true

{}
"#,
        body.join("\n")
    )
}

fn environ(pid: i32) -> Vec<String> {
    fs::read(format!("/proc/{pid}/environ"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

/// Processes whose executable is `exe`.
fn pids_of_exe(exe: &Path) -> Vec<i32> {
    sys::all_pids()
        .into_iter()
        .filter(|&p| sys::exe(p).as_deref() == Some(exe))
        .collect()
}

#[test]
fn deb_pod_under_containerd_service() {
    if !brisk_integration::integration_enabled() {
        return;
    }
    let Some(deb) = std::env::var_os("BRISK_DEB").filter(|d| !d.is_empty()) else {
        eprintln!("BRISK_DEB not set: skipping (the VM lane, scripts/test-vm.sh, runs this)");
        return;
    };
    if !sys::systemd_booted() {
        eprintln!("systemd is not init here: skipping (the VM lane runs this)");
        return;
    }
    let deb = PathBuf::from(deb);
    let pkg = run("dpkg-deb", &["-f", &deb.to_string_lossy(), "Package"])
        .trim()
        .to_string();
    let slice = format!("brisk_unit_{}.slice", std::process::id());
    let node = Node::take_over(&pkg, &slice);

    run("dpkg", &["-i", &deb.to_string_lossy()]);
    let files: Vec<String> = run("dpkg-query", &["-L", &pkg])
        .lines()
        .map(str::to_string)
        .filter(|f| Path::new(f).is_file())
        .collect();
    assert!(
        files.iter().any(|f| f == SHIM),
        "{pkg} installs {SHIM}: {files:?}"
    );

    fs::create_dir_all("/etc/containerd").unwrap();
    fs::write(BRISK_TOML, "systemd_cgroup = true\n").unwrap();
    fs::write(CONFIG, node_config()).unwrap();
    // Type=notify: `start` returns once containerd sent READY=1.
    run("systemctl", &["start", "containerd.service"]);
    let containerd = run(
        "systemctl",
        &["show", "-p", "MainPID", "--value", "containerd.service"],
    )
    .trim()
    .parse::<i32>()
    .expect("containerd's MainPID");
    assert!(
        environ(containerd)
            .iter()
            .any(|e| e.starts_with("NOTIFY_SOCKET=")),
        "containerd.service gives containerd NOTIFY_SOCKET"
    );

    let (bb, pause) = ensure_images().expect("image archives");
    for tar in [&bb, &pause] {
        run(
            "ctr",
            &[
                "-a",
                SOCKET,
                "-n",
                "k8s.io",
                "images",
                "import",
                &tar.to_string_lossy(),
            ],
        );
    }
    let cri = Cri::connect(Path::new(SOCKET), &slice, &node.logs).expect("CRI");
    cri.wait_images(&[BUSYBOX_IMAGE, PAUSE_IMAGE], Duration::from_secs(60))
        .expect("images");

    let pod = cri
        .run_pod_sandbox(BRISK_HANDLER, "unit")
        .expect("RunPodSandbox under brisk");
    let id = cri
        .run_container(
            &pod,
            &ContainerSpec::sh("c", "echo started; exec sleep 1000"),
        )
        .expect("container");
    let shim_exe = PathBuf::from(SHIM);
    let shims = pids_of_exe(&shim_exe);
    assert_eq!(shims.len(), 1, "one brisk shim from the package: {shims:?}");
    let r = cri
        .exec_sync(&id, &["env"], Duration::from_secs(30))
        .expect("ExecSync");
    assert_eq!(r.exit_code, 0);
    assert!(
        !r.stdout_str().contains("NOTIFY_SOCKET"),
        "the container's environment has only what its spec says: {}",
        r.stdout_str()
    );
    let scope = Path::new("/sys/fs/cgroup")
        .join(&slice)
        .join(cri_scope_of(&id));
    assert!(
        scope.join("cgroup.procs").exists(),
        "the container runs in its systemd scope {}",
        scope.display()
    );
    assert_eq!(
        cri.container_status(&id).expect("status").state,
        ContainerState::ContainerRunning as i32
    );
    cri.stop_container(&id, 0).expect("StopContainer");
    let st = cri
        .wait_for_exited(&id, Duration::from_secs(60))
        .expect("exited");
    assert_eq!(st.exit_code, 137);
    cri.stop_pod(&pod.id).expect("StopPodSandbox");
    cri.remove_pod(&pod.id).expect("RemovePodSandbox");
    for img in [BUSYBOX_IMAGE, PAUSE_IMAGE] {
        run("ctr", &["-a", SOCKET, "-n", "k8s.io", "images", "rm", img]);
    }
    drop(cri);

    // Nothing of the pod is left, before and after containerd stops.
    let deadline = Instant::now() + Duration::from_secs(30);
    let left = loop {
        let mut left = Vec::new();
        for p in pids_of_exe(&shim_exe) {
            left.push(format!("brisk shim {p}"));
        }
        for i in [&pod.id, &id] {
            for d in [
                Path::new("/run/containerd/brisk/k8s.io").join(i),
                Path::new("/run/containerd/io.containerd.runtime.v2.task/k8s.io").join(i),
                Path::new("/sys/fs/cgroup")
                    .join(&slice)
                    .join(cri_scope_of(i)),
            ] {
                if d.exists() {
                    left.push(d.display().to_string());
                }
            }
        }
        for m in sys::mounts() {
            if m.mount_point.to_string_lossy().contains(&id)
                || m.mount_point.to_string_lossy().contains(&pod.id)
            {
                left.push(format!("mount {}", m.mount_point.display()));
            }
        }
        if left.is_empty() || Instant::now() > deadline {
            break left;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(left.is_empty(), "left after the pod: {left:?}");
    run("systemctl", &["stop", "containerd.service"]);

    run("dpkg", &["--purge", &pkg]);
    assert!(!package_installed(&pkg), "{pkg} still installed");
    for f in &files {
        assert!(!Path::new(f).exists(), "{f} left after dpkg --purge");
    }
    assert!(!Path::new("/usr/share/doc/brisk").exists());
    drop(node);
    let units = sys::systemd_units(&["cri-containerd-*.scope", &slice]).expect("list units");
    assert!(units.is_empty(), "systemd units left: {units:?}");
}
