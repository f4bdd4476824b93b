//! The node installer image (`scripts/build-installer-image.sh`, entrypoint
//! `scripts/installer/entrypoint.sh`) end to end, as its DaemonSet runs it:
//! a CRI pod on the stock runtime of a private containerd, with hostPath
//! mounts of that containerd's config dir and bin dir, installs brisk and
//! enables a `brisk` handler (containerd restarted through the harness's
//! restart hook, which the pod reaches through the mount of the instance
//! directory); a pod then runs under brisk; stopping the installer pod (its
//! SIGTERM) rolls back and removes what it installed: the config is
//! byte-identical to the original and the bin dir is as before.
//!
//! In production the installer runs the host's containerd and ctr through
//! `nsenter -t 1 -m` (hostPID); here the host's root is mounted read-only at
//! /host and `BRISK_HOST_EXEC=chroot /host` does the same without touching
//! PID 1 of this machine.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use brisk_integration::containerd::{workspace_root, BRISK_SHIM_NAME};
use brisk_integration::cri::{ContainerState, BUSYBOX_IMAGE};
use brisk_integration::{
    brisk_shim_bin, sys, ContainerSpec, Containerd, Cri, Options, BRISK_HANDLER, RUNC_HANDLER,
};

const INSTALLER_IMAGE_PREFIX: &str = "localhost/brisk/installer:";
/// Enable (one restart and a probe) or rollback (one restart), at most.
const STEP_TIMEOUT: Duration = Duration::from_secs(120);
/// What the installer pod's stop gives its SIGTERM handler, as the
/// DaemonSet's terminationGracePeriodSeconds does.
const GRACE_S: i64 = 90;

/// The installer image archive: `$BRISK_INSTALLER_IMAGE`, else built by
/// `scripts/build-installer-image.sh` into `out` from the binaries next to
/// the shim under test.
fn installer_archive(out: &Path) -> PathBuf {
    if let Some(p) = std::env::var_os("BRISK_INSTALLER_IMAGE").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let bin_dir = brisk_shim_bin()
        .parent()
        .expect("shim's directory")
        .to_path_buf();
    let script = workspace_root().join("scripts/build-installer-image.sh");
    let started = Instant::now();
    let built = sys::run_with_timeout(
        Command::new("bash").arg(&script).arg(out).arg(&bin_dir),
        Duration::from_secs(120),
    )
    .expect("run build-installer-image.sh");
    assert!(
        built.status.success(),
        "{} failed:\n{}{}",
        script.display(),
        String::from_utf8_lossy(&built.stdout),
        String::from_utf8_lossy(&built.stderr)
    );
    eprintln!("installer image built in {:?}", started.elapsed());
    out.join("brisk-installer.tar")
}

/// The installer's image name in the archive's index.
fn image_name(archive: &Path) -> String {
    let out = Command::new("tar")
        .arg("-xOf")
        .arg(archive)
        .arg("index.json")
        .output()
        .expect("tar");
    let index = String::from_utf8_lossy(&out.stdout).into_owned();
    let start = index
        .find(INSTALLER_IMAGE_PREFIX)
        .unwrap_or_else(|| panic!("no {INSTALLER_IMAGE_PREFIX}* in {index}"));
    let end = index[start..].find('"').expect("name's end") + start;
    index[start..end].to_string()
}

fn dir_listing(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// The container's CRI log so far (the lines' text only).
fn container_log(pod_log_dir: &Path, name: &str) -> String {
    let text = fs::read_to_string(pod_log_dir.join(format!("{name}.log"))).unwrap_or_default();
    text.lines()
        .map(|l| l.splitn(4, ' ').nth(3).unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n")
}

fn state_of(cd: &Containerd, id: &str) -> anyhow::Result<(Option<ContainerState>, i32)> {
    let st = cd.cri().container_status(id)?;
    Ok((ContainerState::try_from(st.state).ok(), st.exit_code))
}

/// The DaemonSet's pod, on the stock runtime: the installer with the
/// private containerd's paths.
fn installer_spec(cd: &Containerd, image: &str, probe_cgroup: &str, mode: &str) -> ContainerSpec {
    let restart_cmd = cd.restart_hook().expect("restart hook");
    // ctr run mounts the probe image's snapshot in a temporary directory
    // (hence privileged): TMPDIR is in the instance directory, writable also
    // below the read-only /host; so is /run/containerd, for ctr's FIFOs.
    let tmp = cd.dir.join("installer-tmp");
    fs::create_dir_all(&tmp).unwrap();
    let host_view = Path::new("/host").join(cd.dir.strip_prefix("/").unwrap());
    ContainerSpec::new("installer", &[])
        .image(image)
        .privileged()
        .mount(&cd.dir, &cd.dir, false)
        .mount(Path::new("/"), Path::new("/host"), true)
        .mount(&cd.dir, &host_view, false)
        // ctr's FIFOs, which the shim (outside the chroot) opens too.
        .mount(
            Path::new("/run/containerd"),
            Path::new("/host/run/containerd"),
            false,
        )
        .env("BRISK_MODE", mode)
        .env("BRISK_CONFIG", &cd.config_path().to_string_lossy())
        .env(
            "BRISK_TOML",
            &cd.dir.join("installer-brisk.toml").to_string_lossy(),
        )
        .env("BRISK_BIN_DIR", &cd.bin_dir().to_string_lossy())
        .env("BRISK_ADDRESS", &cd.socket.to_string_lossy())
        .env(
            "BRISK_HOST_EXEC",
            &format!("env TMPDIR={} chroot /host", tmp.display()),
        )
        .env("BRISK_CONTAINERD_BIN", &cd.containerd_bin.to_string_lossy())
        .env("BRISK_CTR_BIN", &cd.ctr_bin.to_string_lossy())
        .env("BRISK_RESTART_CMD", &restart_cmd)
        .env("BRISK_PROBE_CGROUP", probe_cgroup)
}

/// StopContainer `id` with the grace period, serving the restart its
/// rollback asks for; it must exit 0. Returns the restarts and its log.
fn stop_installer(cd: &mut Containerd, id: &str, log_dir: &Path, name: &str) -> (usize, String) {
    let stopping = Instant::now();
    let socket = cd.socket.clone();
    let parent = cd.cgroup_parent();
    let logs = cd.dir.join("pod-logs");
    let stop_id = id.to_string();
    let stopper = std::thread::spawn(move || {
        let mut c = Cri::connect(&socket, &parent, &logs)?;
        c.timeout = Duration::from_secs(GRACE_S as u64 + 30);
        c.stop_container(&stop_id, GRACE_S)
    });
    let restarts = cd
        .serve_restarts_until(STEP_TIMEOUT, |cd| {
            Ok(matches!(
                state_of(cd, id)?,
                (Some(ContainerState::ContainerExited), _)
            ))
        })
        .unwrap_or_else(|e| panic!("stop {name}: {e:#}\n{}", container_log(log_dir, name)));
    let stop_call = stopper
        .join()
        .expect("stopper thread")
        .map_err(|e| format!("{e:#}"));
    let log = container_log(log_dir, name);
    eprintln!(
        "{name} stopped in {:?} ({restarts} restarts; StopContainer: {stop_call:?}):\n{log}",
        stopping.elapsed()
    );
    let (_, code) = state_of(cd, id).expect("ContainerStatus");
    assert_eq!(code, 0, "{name} exits 0:\n{log}");
    assert!(log.contains("done (status 0)"), "{log}");
    (restarts, log)
}

/// Install through the DaemonSet's pod (BRISK_MODE=handler: a `brisk`
/// handler), run a pod under brisk, stop the installer pod: the node is as
/// it was.
#[test]
fn installer_pod_enables_brisk_and_its_stop_rolls_back() {
    installer_cycle("handler", BRISK_HANDLER);
}

/// The same with BRISK_MODE=canary: the default `runc` handler runs brisk,
/// its runc options carried into the brisk.toml the installer then removes.
#[test]
fn installer_pod_in_canary_mode_swaps_runc_and_back() {
    installer_cycle("canary", RUNC_HANDLER);
}

/// Install in `mode`, run a pod on `handler` (brisk's after the install),
/// roll back by stopping the installer pod.
/// A private containerd as a node before brisk, with the installer image
/// imported; None where integration tests cannot run.
fn node_with_installer_image() -> Option<(Containerd, String)> {
    if !brisk_integration::integration_enabled() {
        return None;
    }
    brisk_integration::require_brisk();
    let cd = Containerd::start_with(Options {
        without_brisk: true,
        ..Options::default()
    })
    .expect("start private containerd");
    let archive = installer_archive(&cd.dir.join("installer-image"));
    let image = image_name(&archive);
    cd.ctr_in("k8s.io").import(&archive).expect("import");
    cd.cri()
        .wait_images(&[&image], Duration::from_secs(30))
        .expect("CRI sees the installer image");
    Some((cd, image))
}

/// The installer's pod, privileged, on the stock runtime (as the
/// DaemonSet's runs before brisk is there).
fn installer_pod(cd: &Containerd) -> brisk_integration::Pod {
    cd.cri()
        .run_pod_sandbox_with(
            RUNC_HANDLER,
            cd.cri().privileged_pod_config("brisk-installer"),
        )
        .expect("RunPodSandbox")
}

fn installer_cycle(mode: &str, handler: &str) {
    let Some((mut cd, image)) = node_with_installer_image() else {
        return;
    };

    let original = fs::read(cd.config_path()).unwrap();
    let bin_before = dir_listing(&cd.bin_dir());
    let dir_before = dir_listing(&cd.dir);
    let shim = cd.bin_dir().join(BRISK_SHIM_NAME);
    assert!(!shim.exists());
    let probe_cgroup = cd.ctr_cgroup("brisk-installer-probe");

    // 1. The installer pod: installs, enables, restarts containerd once.
    let started = Instant::now();
    let pod = installer_pod(&cd);
    let spec = installer_spec(&cd, &image, &probe_cgroup, mode);
    let installer = cd.cri().run_container(&pod, &spec).expect("run installer");
    let log_dir = pod.log_directory.clone();
    let restarts = cd
        .serve_restarts_until(STEP_TIMEOUT, |cd| {
            let log = container_log(&log_dir, "installer");
            if let Ok((Some(ContainerState::ContainerExited), code)) = state_of(cd, &installer) {
                panic!("the installer exited ({code}) before enabling:\n{log}");
            }
            Ok(log.contains("brisk is enabled"))
        })
        .unwrap_or_else(|e| panic!("installer: {e:#}\n{}", container_log(&log_dir, "installer")));
    eprintln!(
        "installer enabled brisk in {:?} ({restarts} restarts):\n{}",
        started.elapsed(),
        container_log(&log_dir, "installer")
    );
    assert_eq!(restarts, 1, "enable restarts containerd once");
    assert!(shim.is_file(), "{} installed", shim.display());
    assert!(cd.bin_dir().join("brisk-ctl").is_file());
    let enabled = fs::read_to_string(cd.config_path()).unwrap();
    assert!(enabled.contains("io.containerd.brisk.v2"), "{enabled}");
    let toml = fs::read_to_string(cd.dir.join("installer-brisk.toml")).expect("brisk.toml");
    if mode == "canary" {
        assert!(toml.contains("systemd_cgroup = false"), "{toml}");
    }
    assert!(
        sys::cgroup_dirs(&probe_cgroup).is_empty(),
        "the probe's cgroup is removed: {:?}",
        sys::cgroup_dirs(&probe_cgroup)
    );

    // 2. A second installer on the enabled node (what a restarted pod
    // finds): installs again, neither edits the config nor restarts
    // containerd.
    let mut again_spec = installer_spec(&cd, &image, &probe_cgroup, mode);
    again_spec.name = "installer-again".into();
    let again = cd
        .cri()
        .run_container(&pod, &again_spec)
        .expect("run installer again");
    let restarts = cd
        .serve_restarts_until(STEP_TIMEOUT, |_| {
            Ok(container_log(&log_dir, "installer-again").contains("brisk is enabled"))
        })
        .unwrap_or_else(|e| panic!("again: {e:#}"));
    let log = container_log(&log_dir, "installer-again");
    assert_eq!(restarts, 0, "no restart on an enabled node:\n{log}");
    assert!(log.contains("already enabled"), "{log}");
    assert_eq!(fs::read_to_string(cd.config_path()).unwrap(), enabled);

    // 3. A pod under the brisk handler runs on the installed shim.
    let cri = cd.cri();
    let bpod = cri
        .run_pod_sandbox(handler, "on-brisk")
        .expect("RunPodSandbox on brisk");
    let bctr = cri
        .run_container(
            &bpod,
            &ContainerSpec::new("sleep", &["sleep", "1000"]).image(BUSYBOX_IMAGE),
        )
        .expect("run container on brisk");
    let exes: Vec<PathBuf> = cd
        .shim_pids()
        .into_iter()
        .filter(|&p| {
            sys::cmdline(p)
                .map(|argv| argv.iter().any(|a| a == &bpod.id))
                .unwrap_or(false)
        })
        .filter_map(sys::exe)
        .collect();
    assert!(
        exes.len() == 1 && exes[0] == shim,
        "the pod's shim is the installed one: {exes:?}"
    );
    let r = cri
        .exec_sync(&bctr, &["echo", "alive"], Duration::from_secs(10))
        .expect("ExecSync");
    assert_eq!((r.exit_code, r.stdout_str().as_str()), (0, "alive\n"));

    // 4. Stop the installers as kubelet does (StopContainer with the grace
    // period), the second one first, while the pod under brisk still runs:
    // its rollback restarts containerd, which cuts the call off (kubelet
    // would retry; the call runs on a client of its own while this thread
    // serves the restart, until the container has exited); uninstall
    // refuses while brisk serves a task, so the shim and brisk.toml stay
    // and the pod runs on.
    let toml_path = cd.dir.join("installer-brisk.toml");
    let (restarts, log) = stop_installer(&mut cd, &again, &log_dir, "installer-again");
    assert_eq!(restarts, 1, "rollback restarts containerd once");
    assert!(log.contains("rolled back"), "{log}");
    assert!(log.contains("stay while brisk pods run"), "{log}");
    assert!(
        fs::read(cd.config_path()).unwrap() == original,
        "rolled back"
    );
    assert!(
        shim.is_file() && toml_path.is_file(),
        "kept for the brisk pod"
    );
    let cri = cd.cri();
    let r = cri
        .exec_sync(&bctr, &["echo", "still"], Duration::from_secs(10))
        .expect("ExecSync after the rollback");
    assert_eq!((r.exit_code, r.stdout_str().as_str()), (0, "still\n"));
    cri.stop_container(&bctr, 2).expect("StopContainer");
    cri.remove_container(&bctr).expect("RemoveContainer");
    cri.stop_pod(&bpod.id).expect("StopPodSandbox");
    cri.remove_pod(&bpod.id).expect("RemovePodSandbox");
    cri.remove_container(&again).expect("RemoveContainer");
    // The first installer finds nothing to roll back, and removes the rest.
    let (restarts, log) = stop_installer(&mut cd, &installer, &log_dir, "installer");
    assert_eq!(restarts, 0, "nothing left to roll back:\n{log}");
    assert!(log.contains("removed the shim"), "{log}");

    // 5. The node is back.
    assert!(
        fs::read(cd.config_path()).unwrap() == original,
        "config byte-identical to the original:\n{}",
        fs::read_to_string(cd.config_path()).unwrap()
    );
    assert_eq!(dir_listing(&cd.bin_dir()), bin_before, "bin dir as before");
    let mut dir_after = dir_listing(&cd.dir);
    // What the test itself added: the image, the hook, its answers.
    for ours in ["installer-image", "installer-tmp", "restart-hook.sh"] {
        dir_after.remove(ours);
    }
    let added: Vec<&String> = dir_after.difference(&dir_before).collect();
    assert!(
        added.iter().all(|n| !n.contains("brisk")),
        "the installer left {added:?} beside the config"
    );
    cd.cri()
        .remove_container(&installer)
        .expect("RemoveContainer");
    cd.cri().stop_pod(&pod.id).expect("StopPodSandbox");
    cd.cri().remove_pod(&pod.id).expect("RemovePodSandbox");
    cd.assert_no_leaks();
    cd.finish();
}

/// A node whose containerd cannot be identified: the installer refuses,
/// exits non-zero, says why, and changes nothing.
#[test]
fn installer_refuses_a_node_without_containerd_config() {
    let Some((cd, image)) = node_with_installer_image() else {
        return;
    };
    let bin_before = dir_listing(&cd.bin_dir());
    let probe_cgroup = cd.ctr_cgroup("brisk-installer-probe");
    let pod = installer_pod(&cd);
    for (what, key, value, expect) in [
        (
            "no config",
            "BRISK_CONFIG",
            cd.dir.join("no-such-dir/config.toml"),
            "no containerd config at",
        ),
        (
            "no containerd",
            "BRISK_CONTAINERD_BIN",
            cd.dir.join("no-such-containerd"),
            "cannot run the host's containerd",
        ),
    ] {
        let mut spec = installer_spec(&cd, &image, &probe_cgroup, "handler");
        spec.envs.retain(|(k, _)| k != key);
        spec = spec.env(key, &value.to_string_lossy());
        spec.name = format!("installer-{}", what.replace(' ', "-"));
        let id = cd.cri().run_container(&pod, &spec).expect("run installer");
        let st = cd
            .cri()
            .wait_for_exited(&id, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("{what}: {e:#}"));
        let log = container_log(&pod.log_directory, &spec.name);
        assert_ne!(st.exit_code, 0, "{what}: refuses:\n{log}");
        assert!(
            log.contains(expect) && log.contains("refusing"),
            "{what}: {log}"
        );
        cd.cri().remove_container(&id).expect("RemoveContainer");
    }
    assert_eq!(dir_listing(&cd.bin_dir()), bin_before, "nothing installed");
    cd.cri().stop_pod(&pod.id).expect("StopPodSandbox");
    cd.cri().remove_pod(&pod.id).expect("RemovePodSandbox");
    cd.assert_no_leaks();
    cd.finish();
}

fn yaml_docs(path: &Path) -> Vec<serde_yaml::Value> {
    use serde::Deserialize;
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde_yaml::Value::deserialize(d).unwrap_or_else(|e| panic!("{e}")))
        .filter(|v| !v.is_null())
        .collect()
}

fn at<'a>(v: &'a serde_yaml::Value, path: &[&str]) -> &'a serde_yaml::Value {
    let mut v = v;
    for k in path {
        v = v
            .get(k)
            .unwrap_or_else(|| panic!("no {path:?} in the manifest"));
    }
    v
}

/// The DaemonSet manifest: what the entrypoint needs of it (privileged,
/// hostPID for nsenter, the config dir at its own path, a grace period for
/// the rollback), the node selector shared with the RuntimeClass, the image
/// this version builds, and only settings the entrypoint knows.
#[test]
fn installer_manifests() {
    let root = workspace_root();
    let docs = yaml_docs(&root.join("configs/kubernetes/installer-daemonset.yaml"));
    let kind = |k: &str| {
        docs.iter()
            .find(|d| d.get("kind").and_then(|v| v.as_str()) == Some(k))
            .unwrap_or_else(|| panic!("no {k}"))
    };
    let selector = |v: &serde_yaml::Value| {
        v.get("brisk.io/runtime")
            .and_then(|s| s.as_str())
            .map(String::from)
    };
    kind("Namespace");
    let rc = kind("RuntimeClass");
    assert_eq!(at(rc, &["handler"]).as_str(), Some(BRISK_HANDLER));
    assert_eq!(
        selector(at(rc, &["scheduling", "nodeSelector"])).as_deref(),
        Some("canary")
    );
    let ds = kind("DaemonSet");
    let pod = at(ds, &["spec", "template", "spec"]);
    assert_eq!(
        selector(at(pod, &["nodeSelector"])).as_deref(),
        Some("canary")
    );
    assert_eq!(at(pod, &["hostPID"]).as_bool(), Some(true));
    assert!(
        at(pod, &["terminationGracePeriodSeconds"])
            .as_i64()
            .unwrap()
            >= 60
    );
    assert!(at(pod, &["tolerations"]).as_sequence().is_some());
    let c = &at(pod, &["containers"]).as_sequence().unwrap()[0];
    assert_eq!(
        at(c, &["securityContext", "privileged"]).as_bool(),
        Some(true)
    );
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        at(c, &["image"]).as_str(),
        Some(format!("{INSTALLER_IMAGE_PREFIX}{version}").as_str())
    );
    let entrypoint = fs::read_to_string(root.join("scripts/installer/entrypoint.sh")).unwrap();
    for e in at(c, &["env"]).as_sequence().unwrap() {
        let name = at(e, &["name"]).as_str().unwrap();
        assert!(
            entrypoint.contains(&format!("${{{name}:-")),
            "the entrypoint reads {name}"
        );
    }
    let mounts: Vec<&str> = at(c, &["volumeMounts"])
        .as_sequence()
        .unwrap()
        .iter()
        .map(|m| at(m, &["mountPath"]).as_str().unwrap())
        .collect();
    assert!(mounts.contains(&"/etc/containerd"), "{mounts:?}");
    assert!(mounts.contains(&"/host/usr/local/bin"), "{mounts:?}");
}
