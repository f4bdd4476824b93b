//! One scenario per shim feature, through CRI or ctr.

use std::time::Duration;

use brisk_integration::cri::{ContainerState, LinuxContainerResources};
use brisk_integration::{sys, ContainerSpec};

use crate::common::{self, EXIT_TIMEOUT};
use crate::handler_tests;

handler_tests!(
    tty,
    update_resources,
    container_logs,
    pause_resume,
    ctr_exec,
    ctr_run_rm,
    ctr_pids,
    oom_killed
);

/// containerd 2.2 and later ask each runtime for `-info` at start and
/// report what they learn as the handler's features in CRI Status (2.0 and
/// 2.1 ask only the stock runc shim). brisk runs the same
/// runc, so its handler must show what the stock runc handler shows. An
/// `-info` that fails shows nothing: no recursive read-only mounts, which
/// kubelet then refuses for pods on the handler.
#[test]
fn runtime_handler_features_match_runc() {
    let Some(cd) = common::start(brisk_integration::BRISK_HANDLER) else {
        return;
    };
    let status = cd.cri().status().expect("CRI Status");
    let features = |name: &str| {
        status
            .runtime_handlers
            .iter()
            .find(|h| h.name == name)
            .map(|h| h.features)
    };
    let runc = features(brisk_integration::RUNC_HANDLER);
    let brisk = features(brisk_integration::BRISK_HANDLER);
    eprintln!(
        "containerd {:?}: runc handler {runc:?}, brisk handler {brisk:?}",
        cd.containerd_version
    );
    // crun 1.8 has no `features` command: then neither shim has anything
    // to report, and brisk must still match the stock shim.
    let runtime = brisk_integration::containerd::selected_runc_bin(&Default::default())
        .unwrap_or_else(|| "runc".into());
    let has_features = std::process::Command::new(&runtime)
        .arg("features")
        .output()
        .is_ok_and(|o| o.status.success());
    eprintln!("{} features: {has_features}", runtime.display());
    if cd.containerd_version.0 >= 2 && has_features {
        let runc = runc
            .flatten()
            .expect("containerd 2.x reports the runc handler's features");
        assert!(
            runc.recursive_read_only_mounts,
            "runc on this kernel takes rro: {runc:?}"
        );
    }
    let (major, minor, _) = cd.containerd_version;
    if major == 2 && minor < 2 {
        // containerd 2.0 and 2.1 introspect only io.containerd.runc.v2
        // ("introspecting OCI runtime features needs the runtime type to be
        // io.containerd.runc.v2", at debug level) and never ask brisk.
        assert_eq!(
            brisk,
            Some(None),
            "containerd 2.0/2.1 report no features for brisk"
        );
    } else {
        assert_eq!(brisk, runc, "brisk's handler features differ from runc's");
    }
    cd.finish();
}

/// A tty container: its stdout is a terminal, ExecSync works.
fn tty(handler: &str) {
    common::in_pod(handler, "tty", |cd, pod| {
        let cri = cd.cri();
        let spec = ContainerSpec::sh(
            "tty",
            "if [ -t 1 ]; then echo stdout-is-a-tty; fi; exec sleep 1000",
        )
        .tty(true)
        .stdin(true);
        let id = cri.run_container(pod, &spec).expect("tty container");
        let r = cri
            .exec_sync(&id, &["echo", "via-exec"], Duration::from_secs(10))
            .expect("ExecSync");
        assert_eq!(r.exit_code, 0);
        assert_eq!(r.stdout_str(), "via-exec\n");
        common::wait_file_contains(&pod.log_directory.join("tty.log"), "stdout-is-a-tty");
        cri.stop_container(&id, 0).expect("stop");
        let st = cri.wait_for_exited(&id, EXIT_TIMEOUT).expect("exited");
        assert_eq!(st.exit_code, 137);
    });
}

fn read_cgroup(cd: &brisk_integration::Containerd, id: &str, file: &str) -> String {
    let p = cd.cgroup_file(id, file).unwrap_or_else(|| {
        panic!(
            "cgroup file {file} of {id} (in {:?})",
            cd.container_cgroup_dirs(id)
        )
    });
    std::fs::read_to_string(&p)
        .expect("read cgroup file")
        .trim()
        .to_string()
}

/// A cgroup setting as runc writes it, on cgroup v1 or v2.
#[derive(Clone, Copy)]
enum Setting {
    MemoryLimit(u64),
    CpuShares(u64),
    /// (quota, period) in microseconds.
    CpuQuota(u64, u64),
    Frozen(bool),
}

/// The file and the content that `setting` must have on this host's
/// cgroup version: v2's names and units are runc's conversion of v1's
/// (shares -> weight `1 + (shares - 2) * 9999 / 262142`).
fn cgroup_expect(setting: Setting) -> (&'static str, String) {
    let v2 = sys::cgroup_v2_unified();
    match (setting, v2) {
        (Setting::MemoryLimit(b), false) => ("memory.limit_in_bytes", b.to_string()),
        (Setting::MemoryLimit(b), true) => ("memory.max", b.to_string()),
        (Setting::CpuShares(s), false) => ("cpu.shares", s.to_string()),
        (Setting::CpuShares(s), true) => ("cpu.weight", (1 + (s - 2) * 9999 / 262_142).to_string()),
        (Setting::CpuQuota(q, _), false) => ("cpu.cfs_quota_us", q.to_string()),
        (Setting::CpuQuota(q, p), true) => ("cpu.max", format!("{q} {p}")),
        (Setting::Frozen(f), false) => {
            ("freezer.state", if f { "FROZEN" } else { "THAWED" }.into())
        }
        (Setting::Frozen(f), true) => ("cgroup.freeze", if f { "1" } else { "0" }.into()),
    }
}

/// Assert that container `id`'s cgroup has `setting`.
fn assert_cgroup(cd: &brisk_integration::Containerd, id: &str, setting: Setting) {
    let (file, want) = cgroup_expect(setting);
    assert_eq!(read_cgroup(cd, id, file), want, "{file} of {id}");
}

/// UpdateContainerResources on a running container reaches its cgroup.
fn update_resources(handler: &str) {
    common::in_pod(handler, "update", |cd, pod| {
        let cri = cd.cri();
        let spec = ContainerSpec::new("upd", &["sleep", "1000"]).memory_limit(64 << 20);
        let id = cri.run_container(pod, &spec).expect("container");
        assert_cgroup(cd, &id, Setting::MemoryLimit(64 << 20));
        let res = LinuxContainerResources {
            cpu_shares: 512,
            memory_limit_in_bytes: 48 << 20,
            cpu_period: 100_000,
            cpu_quota: 50_000,
            ..Default::default()
        };
        cri.update_container_resources(&id, res)
            .expect("UpdateContainerResources");
        assert_cgroup(cd, &id, Setting::MemoryLimit(48 << 20));
        assert_cgroup(cd, &id, Setting::CpuShares(512));
        assert_cgroup(cd, &id, Setting::CpuQuota(50_000, 100_000));
        let st = cri.container_status(&id).expect("status");
        assert_eq!(st.state, ContainerState::ContainerRunning as i32);
        // The container still works after the update.
        let r = cri
            .exec_sync(&id, &["true"], Duration::from_secs(10))
            .expect("exec");
        assert_eq!(r.exit_code, 0);
    });
}

/// stdout and stderr of a container end up in its CRI log file.
fn container_logs(handler: &str) {
    common::in_pod(handler, "logs", |cd, pod| {
        let cri = cd.cri();
        let spec = ContainerSpec::sh(
            "logger",
            "echo out-line-1; echo err-line >&2; echo out-line-2",
        );
        let id = cri.run_container(pod, &spec).expect("container");
        let st = cri.wait_for_exited(&id, EXIT_TIMEOUT).expect("exited");
        assert_eq!(st.exit_code, 0);
        assert!(
            st.log_path.ends_with("logger.log"),
            "log_path {}",
            st.log_path
        );
        let log = common::wait_file_contains(&pod.log_directory.join("logger.log"), "out-line-2");
        // CRI log format: "<time> <stream> <P|F> <text>"
        let lines: Vec<(&str, &str)> = log
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.splitn(4, ' ').collect();
                (f.len() == 4).then(|| (f[1], f[3]))
            })
            .collect();
        for line in [
            ("stdout", "out-line-1"),
            ("stderr", "err-line"),
            ("stdout", "out-line-2"),
        ] {
            assert!(lines.contains(&line), "{log}");
        }
    });
}

/// `ctr task pause/resume` on a CRI container freezes and thaws its cgroup.
fn pause_resume(handler: &str) {
    common::in_pod(handler, "pause", |cd, pod| {
        let cri = cd.cri();
        let id = cri
            .run_container(pod, &ContainerSpec::new("p", &["sleep", "1000"]))
            .expect("container");
        let k8s = cd.ctr_in("k8s.io");
        let tasks = |verb: &str| {
            k8s.run(&["tasks", verb, &id])
                .unwrap_or_else(|e| panic!("ctr tasks {verb}: {e:#}"));
        };
        tasks("pause");
        common::wait_task_status(&k8s, &id, "PAUSED");
        assert_cgroup(cd, &id, Setting::Frozen(true));
        tasks("resume");
        common::wait_task_status(&k8s, &id, "RUNNING");
        assert_cgroup(cd, &id, Setting::Frozen(false));
        let r = cri
            .exec_sync(&id, &["echo", "alive"], Duration::from_secs(10))
            .expect("exec after resume");
        assert_eq!(r.stdout_str(), "alive\n");
        // Pause again and let pod removal deal with a frozen container.
        tasks("pause");
        common::wait_task_status(&k8s, &id, "PAUSED");
        tasks("resume");
    });
}

/// `ctr tasks exec --exec-id EXEC_ID ID CMD...`
fn exec_args<'a>(exec_id: &'a str, id: &'a str, cmd: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["tasks", "exec", "--exec-id", exec_id, id];
    args.extend_from_slice(cmd);
    args
}

/// `ctr task exec` on a ctr-run container: output and exit codes.
fn ctr_exec(handler: &str) {
    let Some(cd) = common::start(handler) else {
        return;
    };
    let ctr = common::ctr_run_detached(&cd, handler, "exec-target", &["sleep", "1000"]);
    let out = ctr
        .run(&exec_args(
            "e1",
            "exec-target",
            &["sh", "-c", "echo from-exec"],
        ))
        .expect("ctr tasks exec");
    assert_eq!(out, "from-exec\n");
    let o = ctr
        .output(&exec_args("e2", "exec-target", &["sh", "-c", "exit 5"]))
        .expect("ctr tasks exec");
    assert_eq!(o.status.code(), Some(5), "{o:?}");
    // The same exec id can be used again once the first is gone.
    let out = ctr
        .run(&exec_args("e1", "exec-target", &["echo", "again"]))
        .expect("exec again");
    assert_eq!(out, "again\n");
    // Exec into a CRI container through ctr too.
    let cri = cd.cri();
    let pod = cri.run_pod_sandbox(handler, "ctrexec").expect("pod");
    let id = cri
        .run_container(&pod, &ContainerSpec::new("x", &["sleep", "1000"]))
        .expect("container");
    let out = cd
        .ctr_in("k8s.io")
        .run(&exec_args("e1", &id, &["cat", "/proc/1/cmdline"]))
        .expect("ctr exec in CRI container");
    assert_eq!(out, "sleep\u{0}1000\u{0}");
    common::ctr_remove(&ctr, "exec-target");
    common::remove_pod_and_finish(cd, &pod);
}

/// `ctr run --rm busybox echo hi` prints hi (the non-CRI path).
fn ctr_run_rm(handler: &str) {
    let Some(cd) = common::start(handler) else {
        return;
    };
    let ctr = cd.ctr().expect("ctr");
    let cgroup = cd.ctr_cgroup("hi");
    let out = ctr
        .run(&[
            "run",
            "--rm",
            "--runtime",
            common::runtime_type(handler),
            "--cgroup",
            &cgroup,
            brisk_integration::cri::BUSYBOX_IMAGE,
            "hi",
            "echo",
            "hi",
        ])
        .expect("ctr run --rm");
    assert_eq!(out, "hi\n");
    let o = ctr
        .run_rm(
            common::runtime_type(handler),
            Some(&cd.ctr_cgroup("fail")),
            brisk_integration::cri::BUSYBOX_IMAGE,
            "fail",
            &["sh", "-c", "exit 4"],
        )
        .expect("ctr run --rm");
    assert_eq!(o.status.code(), Some(4), "{o:?}");
    assert!(ctr.containers().expect("ls").is_empty());
    cd.assert_no_leaks();
    cd.finish();
}

/// `ctr task ps` lists the container's processes.
fn ctr_pids(handler: &str) {
    let Some(cd) = common::start(handler) else {
        return;
    };
    let ctr = common::ctr_run_detached(
        &cd,
        handler,
        "ps",
        &["sh", "-c", "sleep 1000 & sleep 1001 & wait"],
    );
    // A forked child shows its parent's command line until it has exec'd
    // sleep: wait for the command lines, not only for three pids.
    let want = vec![
        "sh -c sleep 1000 & sleep 1001 & wait".to_string(),
        "sleep 1000".to_string(),
        "sleep 1001".to_string(),
    ];
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let (pids, cmds) = loop {
        let pids = ctr.task_pids("ps").expect("ctr tasks ps");
        let mut cmds: Vec<String> = pids
            .iter()
            .map(|&p| sys::cmdline(p).unwrap_or_default().join(" "))
            .collect();
        cmds.sort();
        if cmds == want || std::time::Instant::now() > deadline {
            break (pids, cmds);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(pids.len(), 3, "pids {pids:?}");
    assert_eq!(cmds, want, "pids {pids:?}");
    common::ctr_remove(&ctr, "ps");
    cd.assert_no_leaks();
    cd.finish();
}

/// A container over its memory limit is reported OOMKilled.
fn oom_killed(handler: &str) {
    common::in_pod(handler, "oom", |cd, pod| {
        let cri = cd.cri();
        let spec = ContainerSpec::sh(
            "oom",
            "x=$(head -c 67108864 /dev/zero | tr '\\0' a); echo survived ${#x}",
        )
        .memory_limit(16 << 20);
        let id = cri.run_container(pod, &spec).expect("container");
        let st = cri
            .wait_for_exited(&id, Duration::from_secs(60))
            .expect("exited");
        assert_eq!(st.exit_code, 137, "status {st:?}");
        // The stock shim polls memory.events and stops when the cgroup
        // goes, which under the systemd driver (scope removed at the exit)
        // loses kills: 10 of 25 in the measurement. That is the
        // baseline's defect, not the harness's: say it, do not fail on it.
        // brisk must be right every time (cgroups::oom_kills_are_never_lost).
        let stock_on_systemd = handler == brisk_integration::RUNC_HANDLER
            && cd.cgroup_driver == brisk_integration::containerd::CgroupDriver::Systemd;
        if stock_on_systemd && st.reason == "Error" {
            eprintln!("stock shim lost the OOM kill under the systemd driver: {st:?}");
            return;
        }
        assert_eq!(st.reason, "OOMKilled", "status {st:?}");
    });
}
