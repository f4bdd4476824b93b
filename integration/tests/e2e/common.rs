use std::time::Duration;

use brisk_integration::{Containerd, Options, Pod, BRISK_HANDLER};

/// Shim processes serving `handler` pods of a containerd.
pub use brisk_integration::scenario::handler_shims;

pub const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

/// Start a private containerd for a test, or None when integration tests
/// cannot run here. For the brisk handler the shim binary must exist.
pub fn start(handler: &str) -> Option<Containerd> {
    start_with(handler, Options::default())
}

pub fn start_with(handler: &str, opts: Options) -> Option<Containerd> {
    if !brisk_integration::integration_enabled() {
        return None;
    }
    if handler == BRISK_HANDLER {
        brisk_integration::require_brisk();
    }
    Some(Containerd::start_with(opts).expect("start private containerd"))
}

/// A scenario on one pod: a private containerd and a pod `name` on
/// `handler`, `body`, then [`remove_pod_and_finish`]. Does nothing when
/// integration tests cannot run here.
pub fn in_pod(handler: &str, name: &str, body: impl FnOnce(&Containerd, &Pod)) {
    let Some(cd) = start(handler) else {
        return;
    };
    let pod = cd.cri().run_pod_sandbox(handler, name).expect("pod");
    body(&cd, &pod);
    remove_pod_and_finish(cd, &pod);
}

/// Stop and remove `pod`, require that nothing is left, tear down.
pub fn remove_pod_and_finish(cd: Containerd, pod: &Pod) {
    let cri = cd.cri();
    cri.stop_pod(&pod.id).expect("stop pod");
    cri.remove_pod(&pod.id).expect("remove pod");
    cd.assert_no_leaks();
    cd.finish();
}

/// runtime_type (for `ctr run --runtime`) of a CRI handler name.
pub fn runtime_type(handler: &str) -> &'static str {
    if handler == BRISK_HANDLER {
        brisk_integration::containerd::BRISK_RUNTIME_TYPE
    } else {
        "io.containerd.runc.v2"
    }
}

/// `ctr run -d` a busybox container in our ctr namespace on `handler`.
pub fn ctr_run_detached(
    cd: &Containerd,
    handler: &str,
    id: &str,
    cmd: &[&str],
) -> brisk_integration::ctr::Ctr {
    let ctr = cd.ctr().expect("ctr namespace with images");
    let cgroup = cd.ctr_cgroup(id);
    let mut args = vec![
        "run",
        "-d",
        "--runtime",
        runtime_type(handler),
        "--cgroup",
        &cgroup,
        brisk_integration::cri::BUSYBOX_IMAGE,
        id,
    ];
    args.extend_from_slice(cmd);
    ctr.run(&args).expect("ctr run -d");
    wait_task_status(&ctr, id, "RUNNING");
    ctr
}

pub fn wait_task_status(ctr: &brisk_integration::ctr::Ctr, id: &str, want: &str) {
    let deadline = std::time::Instant::now() + EXIT_TIMEOUT;
    loop {
        let st = ctr.task_status(id).expect("ctr tasks ls");
        if st.as_deref() == Some(want) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "task {id} not {want}: {st:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kill, delete the task and remove the container of a ctr-run container.
pub fn ctr_remove(ctr: &brisk_integration::ctr::Ctr, id: &str) {
    if ctr.task_status(id).expect("ctr tasks ls").as_deref() != Some("STOPPED") {
        ctr.run(&["tasks", "kill", "-s", "SIGKILL", id])
            .expect("ctr tasks kill");
        wait_task_status(ctr, id, "STOPPED");
    }
    ctr.run(&["tasks", "rm", id]).expect("ctr tasks rm");
    ctr.run(&["containers", "rm", id])
        .expect("ctr containers rm");
}

/// Wait until `path` contains `needle` (CRI log files are written asynchronously).
pub fn wait_file_contains(path: &std::path::Path, needle: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = std::fs::read_to_string(path).unwrap_or_default();
        if s.contains(needle) {
            return s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} lacks {needle:?}; has:\n{s}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// For each scenario `fn NAME(handler: &str)`, generate the tests
/// `runc::NAME` (stock shim, checks the harness) and `brisk::NAME`.
#[macro_export]
macro_rules! handler_tests {
    ($($name:ident),* $(,)?) => {
        mod runc {
            $(
                #[test]
                fn $name() {
                    super::$name(brisk_integration::RUNC_HANDLER)
                }
            )*
        }
        mod brisk {
            $(
                #[test]
                fn $name() {
                    super::$name(brisk_integration::BRISK_HANDLER)
                }
            )*
        }
    };
}

/// `sh -c` script: wait until `/go` exists in the rootfs, then exit `code`.
pub fn exit_on_go(code: i32) -> String {
    format!("while [ ! -e /go ]; do sleep 0.05; done; exit {code}")
}

/// Let a CRI container started with [`exit_on_go`] exit: create `/go` in
/// its rootfs from the host (works while containerd is down, too).
pub fn go(cd: &Containerd, id: &str) {
    std::fs::write(rootfs_of(cd, id).join("go"), "").expect("create /go in the container's rootfs");
}

/// The host path of a CRI container's rootfs (its bundle's mount point).
pub fn rootfs_of(cd: &Containerd, id: &str) -> std::path::PathBuf {
    cd.dir
        .join("state/io.containerd.runtime.v2.task/k8s.io")
        .join(id)
        .join("rootfs")
}

/// brisk config (for `Options::brisk_config_toml`) that runs runc through
/// the [`brisk_integration::fault::RuncWrapper`] installed in the instance
/// directory.
pub fn wrapper_options() -> Options {
    wrapper_at(brisk_integration::fault::RuncWrapper::SCRIPT_IN_DIR)
}

/// [`wrapper_options`] with the wrapper under a name other than runc's:
/// brisk leaves every delete to it, as to any other OCI runtime, so that a
/// test can hold the `runc delete` of an exited container.
pub fn wrapper_options_deleting_by_runtime() -> Options {
    wrapper_at(brisk_integration::fault::RuncWrapper::OTHER_RUNTIME_IN_DIR)
}

fn wrapper_at(script_in_dir: &str) -> Options {
    Options {
        brisk_config_toml: Some(format!("runc_binary = \"{{dir}}/{script_in_dir}\"\n")),
        ..Default::default()
    }
}

/// `ctr events` of a containerd, every line kept; subscribed when
/// [`CtrEvents::start`] returns. ctr takes from milliseconds (a host) to
/// seconds (a TCG guest) to subscribe, so the start is confirmed by an
/// event of our own (a label on the k8s.io namespace) coming through.
pub struct CtrEvents {
    child: std::process::Child,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl CtrEvents {
    pub fn start(cd: &Containerd) -> CtrEvents {
        use std::io::BufRead;
        let ctr = cd.ctr_in("k8s.io");
        let mut child = ctr
            .command(&["events"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("ctr events");
        let out = child.stdout.take().unwrap();
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let l = lines.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                l.lock().unwrap().push(line);
            }
        });
        let events = CtrEvents { child, lines };
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        for n in 0.. {
            let marker = format!("brisk-events-sync={}-{n}", std::process::id());
            ctr.run(&["namespaces", "label", "k8s.io", &marker])
                .expect("ctr namespaces label");
            let seen = std::time::Instant::now() + Duration::from_secs(2);
            while std::time::Instant::now() < seen {
                let value = marker.split('=').nth(1).unwrap();
                if events.lines().iter().any(|l| l.contains(value)) {
                    return events;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            assert!(
                std::time::Instant::now() < deadline,
                "ctr events never subscribed"
            );
        }
        unreachable!()
    }

    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }
}

impl Drop for CtrEvents {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
