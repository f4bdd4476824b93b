//! runc's state of an exited container goes as soon as its exit is
//! published, before containerd's Delete: the shim runs `runc delete` on a
//! detached worker, so Delete (which CRI waits for before it shows EXITED)
//! need not.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use brisk_integration::sys;
use containerd_shim_protos::api;

use crate::direct::{status_of, Fixture};

fn runc_state(f: &Fixture, id: &str) -> PathBuf {
    Path::new("/run/containerd/brisk").join(&f.ns).join(id)
}

fn wait_gone(p: &Path, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while p.exists() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// Runs `args` as container `id` to its exit; returns the exit status.
fn run_to_exit(f: &Fixture, id: &str, args: &[&str], edit: impl Fn(&Path)) -> u32 {
    let bundle = f.bundle(id, args);
    edit(&bundle);
    let layer = f.layer(id);
    f.create(&f.request(id, &bundle, layer.mounts(), None))
        .unwrap_or_else(|e| panic!("create {id}: {e}"));
    f.shim
        .start_task(id, "")
        .unwrap_or_else(|e| panic!("start {id}: {e}"));
    f.shim
        .wait(id, "", Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("wait {id}: {e}"))
        .exit_status
}

#[test]
fn runc_state_goes_at_exit_and_the_id_can_be_reused() {
    let Some(f) = Fixture::new("eagerdel") else {
        return;
    };
    let id = f.id("short");
    assert_eq!(run_to_exit(&f, &id, &["sh", "-c", "exit 7"], |_| {}), 7);
    let state = runc_state(&f, &id);
    assert!(
        wait_gone(&state, Duration::from_secs(10)),
        "runc state {} still there before Delete\n{}",
        state.display(),
        f.shim_log()
    );
    // The exit is still told as it was.
    let st = f.shim.state(&id, "").expect("State after exit");
    assert_eq!(status_of(&st), api::Status::STOPPED);
    assert_eq!(st.exit_status, 7);
    let del = f.shim.delete(&id, "").expect("Delete");
    assert_eq!(del.exit_status, 7);

    // The same id again, at once, in the same shim.
    assert_eq!(run_to_exit(&f, &id, &["sh", "-c", "exit 9"], |_| {}), 9);
    assert_eq!(f.shim.delete(&id, "").expect("Delete").exit_status, 9);
    f.assert_keeper_alive();
    f.finish();
}

/// Without its own pid namespace, what the init left running dies with it
/// (runc delete kills the rest of the cgroup), as with the stock shim.
#[test]
fn leftovers_of_a_shared_pid_namespace_die_at_exit() {
    let Some(f) = Fixture::new("sharedpid") else {
        return;
    };
    let id = f.id("orphans");
    let drop_pid_ns = |bundle: &Path| {
        let path = bundle.join("config.json");
        let mut spec: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        spec["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .retain(|ns| ns["type"] != "pid");
        std::fs::write(&path, serde_json::to_vec(&spec).unwrap()).unwrap();
    };
    let status = run_to_exit(
        &f,
        &id,
        &["sh", "-c", "sleep 1000 & echo $!; exit 3"],
        drop_pid_ns,
    );
    assert_eq!(status, 3);
    let pid: i32 = f
        .output(&id)
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("pid of the orphan: {e}: {:?}", f.output(&id)));
    assert!(
        sys::wait_gone(&[pid], Duration::from_secs(10)),
        "orphan {pid} of a shared-pid container still runs after its init exited\n{}",
        f.shim_log()
    );
    f.shim.delete(&id, "").expect("Delete");
    f.finish();
}
