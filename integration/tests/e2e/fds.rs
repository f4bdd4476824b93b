//! No fd of the shim (nor of runc) reaches a container's processes
//! (CVE-2024-21626 class: a leaked directory fd lets a process escape to
//! the host's filesystem). Seen from the host, in /proc/PID/fd, for the
//! init of a container and for an exec, under brisk.

use std::{collections::BTreeMap, time::Duration};

use super::direct::Fixture;

/// The fds of `pid` with what they point to.
fn fds(pid: u32) -> BTreeMap<u32, String> {
    let dir = format!("/proc/{pid}/fd");
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .map(|e| {
            let e = e.unwrap();
            let n = e.file_name().to_string_lossy().parse().unwrap();
            let target = std::fs::read_link(e.path())
                .map(|t| t.display().to_string())
                .unwrap_or_else(|e| format!("({e})"));
            (n, target)
        })
        .collect()
}

/// Waits until `pid` runs `argv`: before that it is still runc's init,
/// whose own fds close on the way (they are runc's, not the container's).
fn wait_runs(pid: u32, argv: &[&str]) {
    let want: Vec<u8> = argv
        .iter()
        .flat_map(|a| [a.as_bytes(), b"\0"].concat())
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default() != want {
        assert!(
            std::time::Instant::now() < deadline,
            "pid {pid} does not run {argv:?} after 10 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn assert_only_stdio(what: &str, pid: u32) {
    wait_runs(pid, &["sleep", "1000"]);
    let got = fds(pid);
    assert_eq!(
        got.keys().copied().collect::<Vec<_>>(),
        vec![0, 1, 2],
        "{what} (pid {pid}) has fds beyond 0, 1, 2: {got:#?}"
    );
}

#[test]
fn container_and_exec_processes_hold_only_their_stdio() {
    let Some(f) = Fixture::new("fds") else {
        return;
    };
    let st = f.shim.state(&f.keeper, "").expect("State of keeper");
    assert_only_stdio("the keeper's init", st.pid);

    let out = f.work.join("fds-exec.out");
    f.shim
        .exec(&f.keeper, "fds-exec", &["sleep", "1000"], Some(&out))
        .expect("exec");
    let pid = f
        .shim
        .start_task(&f.keeper, "fds-exec")
        .expect("start exec");
    wait_runs(pid, &["sleep", "1000"]);
    let fds_of_exec = fds(pid);
    f.shim.kill(&f.keeper, "fds-exec", 9).expect("kill exec");
    f.shim
        .wait(&f.keeper, "fds-exec", Duration::from_secs(30))
        .expect("wait exec");
    f.shim.delete(&f.keeper, "fds-exec").expect("delete exec");
    assert_eq!(
        fds_of_exec.keys().copied().collect::<Vec<_>>(),
        vec![0, 1, 2],
        "the exec (pid {pid}) has fds beyond 0, 1, 2: {fds_of_exec:#?}"
    );
    f.assert_keeper_alive();
    f.finish();
}
