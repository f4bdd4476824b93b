//! overlayfs `volatile` safety: a workdir left dirty by an unclean shutdown
//! is never mounted silently; a snapshot unmounted cleanly mounts again, with
//! its data.
//!
//! Most cases drive a directly started shim with overlay layers built from
//! directories in the test's temporary directory; the last ones reuse one
//! containerd snapshot through `ctr task start` after `ctr task rm`.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use brisk_integration::containerd::BRISK_RUNTIME_TYPE;
use brisk_integration::cri::BUSYBOX_IMAGE;
use brisk_integration::fault::{RuncWrapper, UmountDelay};
use brisk_integration::{sys, Containerd, Options, BRISK_HANDLER};
use containerd_shim_protos::ttrpc::Code;

use crate::common;
use crate::direct::{config_body_options, expect_err, Fixture, Layer};

fn wait_marker_gone(layer: &Layer, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while layer.marker().exists() {
        assert!(
            Instant::now() < deadline,
            "volatile marker {} still there {timeout:?} after a clean unmount",
            layer.marker().display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Options of the mount at `target`.
fn mount_options(target: &Path) -> Option<String> {
    sys::mounts()
        .into_iter()
        .find(|m| m.mount_point == target)
        .map(|m| m.options)
}

/// A marker left by an unclean shutdown fails Create with an error that
/// names it, mounts nothing and keeps the marker; with
/// `discard_dirty_volatile_workdir = true` the same snapshot mounts.
#[test]
fn volatile_dirty_workdir_is_refused() {
    let Some(f) = Fixture::new("dirty") else {
        return;
    };
    let id = f.id("dirty");
    let layer = f.layer(&id);
    std::fs::create_dir_all(layer.marker()).unwrap();
    let bundle = f.bundle(&id, &["true"]);
    let msg = expect_err(
        "Create on a dirty volatile workdir",
        f.create(&f.request(&id, &bundle, layer.mounts(), None)),
        Code::UNKNOWN,
        &["work/incompat/volatile", "not unmounted cleanly"],
    );
    assert!(
        msg.contains(&layer.work.display().to_string()),
        "names the workdir: {msg}"
    );
    assert!(
        mount_options(&bundle.join("rootfs")).is_none(),
        "nothing mounted"
    );
    assert!(layer.marker().exists(), "the marker is kept");
    f.assert_keeper_alive();

    // The operator's escape hatch.
    let id2 = f.id("discard");
    let bundle2 = f.bundle(&id2, &["sh", "-c", "echo mounted"]);
    let opts = config_body_options("discard_dirty_volatile_workdir = true\n");
    f.create(&f.request(&id2, &bundle2, layer.mounts(), Some(opts)))
        .expect("Create with discard_dirty_volatile_workdir");
    f.shim.start_task(&id2, "").expect("start");
    assert_eq!(f.wait_and_delete(&id2), 0);
    assert_eq!(f.output(&id2), "mounted\n");
    f.wait_unmounted(&bundle2, Duration::from_secs(10)).unwrap();
    wait_marker_gone(&layer, Duration::from_secs(10));
    assert!(
        f.shim_log().contains("discarding the volatile marker"),
        "the discard is logged:\n{}",
        f.shim_log()
    );
    f.finish();
}

/// Data written on a volatile rootfs is there after a clean unmount and a
/// new mount of the same snapshot, and the marker is gone in between.
#[test]
fn volatile_clean_unmount_remounts_with_data() {
    let Some(f) = Fixture::new("remount") else {
        return;
    };
    let a = f.id("writer");
    let layer = f.layer("snap");
    let bundle_a = f.bundle(&a, &["sh", "-c", "echo persisted > /data/f; sleep 1000"]);
    f.create(&f.request(&a, &bundle_a, layer.mounts(), None))
        .expect("create writer");
    f.shim.start_task(&a, "").expect("start writer");
    let opts = mount_options(&bundle_a.join("rootfs")).expect("rootfs mounted");
    assert!(
        opts.split(',')
            .any(|o| o == "volatile" || o == "fsync=volatile"),
        "rootfs mounted volatile: {opts}"
    );
    assert!(
        layer.marker().exists(),
        "a volatile mount leaves its marker"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !layer.upper.join("data/f").exists() {
        assert!(Instant::now() < deadline, "writer never wrote");
        std::thread::sleep(Duration::from_millis(20));
    }
    f.shim.kill(&a, "", 9).expect("kill writer");
    assert_eq!(f.wait_and_delete(&a), 137);
    f.wait_unmounted(&bundle_a, Duration::from_secs(10))
        .unwrap();
    wait_marker_gone(&layer, Duration::from_secs(10));

    for round in 0..2 {
        let b = f.id("reader");
        let bundle_b = f.bundle(&b, &["cat", "/data/f"]);
        f.create(&f.request(&b, &bundle_b, layer.mounts(), None))
            .unwrap_or_else(|e| panic!("round {round}: create on the reused snapshot: {e}"));
        f.shim.start_task(&b, "").expect("start reader");
        assert_eq!(f.wait_and_delete(&b), 0, "round {round}: {}", f.output(&b));
        assert_eq!(f.output(&b), "persisted\n", "round {round}");
        f.wait_unmounted(&bundle_b, Duration::from_secs(10))
            .unwrap();
        wait_marker_gone(&layer, Duration::from_secs(10));
    }
    f.assert_keeper_alive();
    f.finish();
}

/// A Create that fails after the rootfs was mounted (runc create fails)
/// unmounts it cleanly, so the same snapshot mounts again afterwards.
#[test]
fn volatile_snapshot_mounts_again_after_failed_create() {
    let opts = Options {
        brisk_config_toml: Some(format!(
            "runc_binary = \"{{dir}}/{}\"\n",
            RuncWrapper::SCRIPT_IN_DIR
        )),
        ..Default::default()
    };
    let Some(f) = Fixture::with_options("failcreate", opts) else {
        return;
    };
    let wrapper = RuncWrapper::install(&f.cd.dir).expect("wrapper");
    let config = config_body_options(&wrapper.toml_line());
    let layer = f.layer("snap");
    let a = f.id("fails");
    wrapper.fail("create", &[&a]).unwrap();
    let bundle_a = f.bundle(&a, &["true"]);
    expect_err(
        "Create with a failing runc create",
        f.create(&f.request(&a, &bundle_a, layer.mounts(), Some(config.clone()))),
        Code::UNKNOWN,
        &["runc create failed", "fails on purpose"],
    );
    f.wait_unmounted(&bundle_a, Duration::from_secs(10))
        .unwrap();
    f.assert_keeper_alive();

    let b = f.id("works");
    let bundle_b = f.bundle(&b, &["echo", "second"]);
    let r = f.create(&f.request(&b, &bundle_b, layer.mounts(), Some(config)));
    if let Err(e) = &r {
        panic!(
            "Create on the snapshot whose earlier Create failed (and was unmounted): {e}; marker {} exists: {}",
            layer.marker().display(),
            layer.marker().exists()
        );
    }
    f.shim.start_task(&b, "").expect("start");
    assert_eq!(f.wait_and_delete(&b), 0);
    assert_eq!(f.output(&b), "second\n");
    f.finish();
}

/// The rootfs of a ctr container: `state/.../NS/ID/rootfs`.
fn ctr_rootfs(cd: &Containerd, ns: &str, id: &str) -> std::path::PathBuf {
    cd.dir
        .join("state/io.containerd.runtime.v2.task")
        .join(ns)
        .join(id)
        .join("rootfs")
}

const COUNTER_SCRIPT: &str =
    "while [ ! -e /go ]; do sleep 0.05; done; echo run >> /data.log; cat /data.log";

/// The same, but each task lives 4 s after writing its line.
const SLOW_COUNTER_SCRIPT: &str =
    "while [ ! -e /go ]; do sleep 0.05; done; echo run >> /data.log; sleep 4; cat /data.log";

/// `ctr run` (foreground, container kept) of a container whose command
/// waits for `/go`, then appends a line to `/data.log` and prints the file.
fn ctr_run_args(cd: &Containerd, id: &str, script: &str) -> Vec<String> {
    let cgroup = cd.ctr_cgroup(id);
    let mut args = vec!["run", "--runtime", BRISK_RUNTIME_TYPE, "--cgroup", &cgroup];
    // The instance's brisk.toml, when the test wrote one.
    let config = cd.dir.join("brisk.toml").to_string_lossy().into_owned();
    if cd.dir.join("brisk.toml").exists() {
        args.extend_from_slice(&["--runtime-config-path", &config]);
    }
    args.extend_from_slice(&[BUSYBOX_IMAGE, id, "sh", "-c", script]);
    args.iter().map(|s| s.to_string()).collect()
}

/// `ctr ARGS` in the foreground (`run` or `tasks start` of container `id`),
/// with `/go` created in its rootfs once the task runs, and `before_go`
/// called (with the shim's pid) just before.
fn ctr_start_once(
    cd: &Containerd,
    ctr: &brisk_integration::ctr::Ctr,
    id: &str,
    args: &[String],
    before_go: impl FnOnce(i32),
) -> std::result::Result<String, String> {
    let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let child = ctr
        .command(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ctr tasks start");
    let pid = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let go = ctr_rootfs(cd, &ctr.namespace, id).join("go");
    let go_persists = args.first() != Some(&"run");
    loop {
        if let Ok(r) = rx.try_recv() {
            let o = r.expect("ctr output");
            // `/go` is in the snapshot already after the first round.
            if o.status.success() && go_persists {
                return Ok(String::from_utf8_lossy(&o.stdout).into_owned());
            }
            return Err(format!(
                "ctr {args:?} exited before the task ran ({}): {}{}",
                o.status,
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ));
        }
        if ctr.task_status(id).ok().flatten().as_deref() == Some("RUNNING") {
            break;
        }
        if Instant::now() > deadline {
            sys::kill(pid, libc::SIGKILL);
            return Err("task not RUNNING within 20 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // A task that needs no `/go` may be gone already, and its shim with it.
    match cd.brisk_shim_pids().first() {
        Some(&shim) => before_go(shim),
        None => assert!(go_persists, "no brisk shim for a running task"),
    }
    if !go_persists {
        std::fs::write(&go, "").expect("create /go in the rootfs");
    }
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(r) => {
            let o = r.expect("ctr output");
            if o.status.success() {
                Ok(String::from_utf8_lossy(&o.stdout).into_owned())
            } else {
                Err(format!(
                    "ctr {args:?} failed ({}): {}{}",
                    o.status,
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                ))
            }
        }
        Err(_) => {
            sys::kill(pid, libc::SIGKILL);
            Err(format!("ctr {args:?} did not return within 30 s"))
        }
    }
}

/// `ctr task start` after `ctr task rm`, three times back to back: every task
/// mounts the same snapshot again and sees the lines the earlier ones wrote.
#[test]
fn volatile_ctr_snapshot_reused_by_new_tasks() {
    let Some(cd) = common::start(BRISK_HANDLER) else {
        return;
    };
    let id = "reuse";
    let ctr = cd.ctr().expect("ctr");
    let run = ctr_run_args(&cd, id, COUNTER_SCRIPT);
    let start = vec!["tasks".to_string(), "start".into(), id.into()];
    for round in 1..=3 {
        let args = if round == 1 { &run } else { &start };
        let out = ctr_start_once(&cd, &ctr, id, args, |_| {})
            .unwrap_or_else(|e| panic!("round {round}: {e}\n{}", cd.log_tail(40)));
        assert_eq!(out, "run\n".repeat(round), "round {round}");
        // ctr deletes the task when it ends; wait for that before the next.
        let deadline = Instant::now() + Duration::from_secs(10);
        while ctr.task_status(id).expect("tasks ls").is_some() {
            assert!(
                Instant::now() < deadline,
                "task of round {round} not deleted"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    ctr.run(&["containers", "rm", id]).expect("containers rm");
    cd.assert_no_leaks();
    cd.finish();
}

/// `ctr task start` of a new task on the snapshot right after `ctr task rm`
/// of the previous one, while the previous shim's own unmount is slow
/// (umount2 delayed 3 s; containerd's bundle cleanup has unmounted the
/// rootfs already). The new task must start on the snapshot at once and run
/// to its end (each task lives 4 s).
fn reuse_while_previous_unmount_is_slow(volatile: bool) {
    let opts = Options {
        brisk_config_toml: Some(format!("volatile = {volatile}\n")),
        ..Default::default()
    };
    let Some(cd) = common::start_with(BRISK_HANDLER, opts) else {
        return;
    };
    let id = "slowreuse";
    let ctr = cd.ctr().expect("ctr");
    let start = vec!["tasks".to_string(), "start".into(), id.into()];
    let mut strace = None;
    let run = ctr_run_args(&cd, id, SLOW_COUNTER_SCRIPT);
    let first = ctr_start_once(&cd, &ctr, id, &run, |shim| {
        strace = Some(UmountDelay::attach(shim, Duration::from_secs(3)).expect("strace"));
    });
    assert_eq!(first.as_deref(), Ok("run\n"), "first task");
    let deadline = Instant::now() + Duration::from_secs(10);
    while ctr.task_status(id).expect("tasks ls").is_some() {
        assert!(Instant::now() < deadline, "first task not deleted");
        std::thread::sleep(Duration::from_millis(20));
    }
    let second = ctr_start_once(&cd, &ctr, id, &start, |_| {});
    drop(strace);
    let log = cd.log_tail(40);
    assert_eq!(
        second.as_deref(),
        Ok("run\nrun\n"),
        "second task on the snapshot while the first shim's unmount is pending\n{log}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while ctr.task_status(id).expect("tasks ls").is_some() {
        assert!(Instant::now() < deadline, "second task not deleted");
        std::thread::sleep(Duration::from_millis(20));
    }
    ctr.run(&["containers", "rm", id]).expect("containers rm");
    cd.assert_no_leaks();
    cd.finish();
}

#[test]
fn volatile_ctr_snapshot_reused_while_previous_unmount_is_slow() {
    reuse_while_previous_unmount_is_slow(true);
}

/// Without volatile no marker is involved: what is left is the shim that was
/// told to shut down and still serves its socket while it waits for the
/// unmount, so the new task lands in a shim that is about to exit.
#[test]
fn ctr_task_started_while_previous_shim_waits_for_unmount() {
    reuse_while_previous_unmount_is_slow(false);
}
