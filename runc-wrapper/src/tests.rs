use std::{io::Write, sync::Arc};

use super::*;

/// Writes a fake runc that answers each subcommand the way real runc does.
///
/// A child process writes the file: had this process opened it for writing,
/// another test thread forking at that moment would hold the write fd until
/// its exec, and executing the script then fails with "Text file busy".
fn fake_runc(dir: &Path, body: &str) -> PathBuf {
    let path = dir.join("runc");
    let mut child = std::process::Command::new("sh")
        .args(["-c", "cat > \"$1\" && chmod 755 \"$1\"", "sh"])
        .arg(&path)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "#!/bin/sh\n{body}").unwrap();
    drop(stdin);
    assert!(child.wait().unwrap().success());
    path
}

fn runc(dir: &Path, body: &str) -> Runc {
    Runc::new(fake_runc(dir, body), dir.join("root"), Arc::new(DirectWait))
}

#[tokio::test]
async fn state_decodes_json() {
    let dir = tempfile::tempdir().unwrap();
    let r = runc(
        dir.path(),
        r#"echo '{"ociVersion":"1.0.2","id":"c1","pid":42,"status":"running","bundle":"/b","rootfs":"/b/rootfs","created":"2024-01-01T00:00:00Z","owner":""}'"#,
    );
    let st = r.state("c1").await.unwrap();
    assert_eq!(st.pid, 42);
    assert_eq!(st.status, "running");
}

#[tokio::test]
async fn failure_carries_stderr_and_status() {
    let dir = tempfile::tempdir().unwrap();
    let r = runc(dir.path(), "echo 'container does not exist' >&2; exit 1");
    let err = r.start("nope").await.unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert!(
        err.to_string()
            .contains("runc start failed (exit status 1)"),
        "{err}"
    );
}

#[tokio::test]
async fn missing_binary_is_a_spawn_error() {
    let r = Runc::new("/nonexistent/runc", "/tmp", Arc::new(DirectWait));
    let err = r.pause("c").await.unwrap_err();
    assert!(matches!(err, RuncError::Spawn { .. }), "{err}");
    assert!(err.to_string().contains("/nonexistent/runc"));
}

#[tokio::test]
async fn timeout_kills_runc() {
    let dir = tempfile::tempdir().unwrap();
    let r = runc(dir.path(), "exec sleep 30").with_timeout(Duration::from_millis(200));
    let started = Instant::now();
    let err = r.resume("c").await.unwrap_err();
    assert!(matches!(err, RuncError::Timeout { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// A runc killed at its timeout is gone when the call returns: the
/// caller's cleanup (`runc delete --force` after a failed create) must not
/// run beside a `runc create` still making the container's state.
#[tokio::test]
async fn a_runc_killed_at_its_timeout_is_gone_when_the_call_returns() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pid");
    let r = runc(
        dir.path(),
        &format!("echo $$ > {}; exec sleep 30", pid_file.display()),
    )
    .with_timeout(Duration::from_millis(300));
    let err = r.resume("c").await.unwrap_err();
    assert!(matches!(err, RuncError::Timeout { .. }), "{err}");
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())).unwrap_or_default();
    // Gone, or a zombie waiting for its reaper: not running any more.
    let state = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .next();
    assert!(
        state.is_none() || state == Some("Z"),
        "runc {} still runs after its timeout: {stat}",
        pid.trim()
    );
}

#[tokio::test]
async fn update_sends_resources_on_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("stdin.json");
    let r = runc(dir.path(), &format!("cat > {}", out.display()));
    let res = br#"{"cpu":{"shares":512,"newKnob":1},"futureController":{}}"#;
    r.update("c", res).await.unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), res);
}

#[tokio::test]
async fn ps_and_stats_decode() {
    let dir = tempfile::tempdir().unwrap();
    let r = runc(
        dir.path(),
        r#"case "$3" in
ps) echo '[1,2,3]';;
events) echo '{"type":"stats","id":"c","data":{"cpu":{"usage":{"total":10}},"memory":{"usage":{"usage":4096}},"pids":{"current":2}}}';;
esac"#,
    );
    assert_eq!(r.ps("c").await.unwrap(), vec![1, 2, 3]);
    let s = r.stats("c").await.unwrap();
    assert_eq!(s.memory.usage.usage, 4096);
    assert_eq!(s.pids.current, 2);
}

#[test]
fn log_errors_take_the_last_error() {
    let log = r#"{"level":"warning","msg":"w","time":"t"}
{"level":"error","msg":"first","time":"t"}
not json
{"level":"error","msg":"exec failed: no such file","time":"t"}
"#;
    assert_eq!(
        parse_log_errors(log).as_deref(),
        Some("exec failed: no such file")
    );
    assert_eq!(parse_log_errors(""), None);
}

#[tokio::test]
async fn stopped_container_is_recognised() {
    let dir = tempfile::tempdir().unwrap();
    let r = runc(
        dir.path(),
        "echo 'time=\"t\" level=error msg=\"container not running\"' >&2; exit 1",
    );
    let err = r.update("c", b"{}").await.unwrap_err();
    assert!(err.is_not_running(), "{err}");
    assert!(!err.is_not_found());
}

/// An [`ExitWatch`] whose reaper wins the race with the timeout: runc's
/// exit is reaped at once but its status is never reported, and another
/// process is made to take runc's pid (ns_last_pid; root only).
struct ReapedAndReused {
    victim: std::sync::Mutex<Option<std::process::Child>>,
}

impl ExitWatch for ReapedAndReused {
    fn spawn(&self, cmd: &mut std::process::Command) -> std::io::Result<Spawned> {
        let child = cmd.spawn()?;
        let pidfd = pidfd_of(child.id());
        let pid = child.id();
        let mut child = child;
        child.wait()?;
        let mut victim = None;
        for _ in 0..50 {
            std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string())?;
            let mut v = std::process::Command::new("sleep").arg("100").spawn()?;
            if v.id() == pid {
                victim = Some(v);
                break;
            }
            let _ = v.kill();
            let _ = v.wait();
        }
        *self.victim.lock().unwrap() = victim;
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::mem::forget(tx);
        Ok(Spawned {
            child,
            exit: rx,
            pidfd,
        })
    }
}

/// Issue 14 item 4: a runc that timed out is killed through its pidfd, so
/// the kill never hits a process that reused its pid.
#[tokio::test]
async fn timeout_kill_spares_a_process_that_took_runcs_pid() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("not root: cannot arrange a pid reuse; skipped");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let watch = Arc::new(ReapedAndReused {
        victim: std::sync::Mutex::new(None),
    });
    let r = Runc::new(fake_runc(dir.path(), "exit 0"), dir.path(), watch.clone())
        .with_timeout(Duration::from_millis(300));
    let err = r.resume("c").await.unwrap_err();
    assert!(matches!(err, RuncError::Timeout { .. }), "{err}");
    let Some(mut victim) = watch.victim.lock().unwrap().take() else {
        eprintln!("the pid was taken by another process meanwhile; skipped");
        return;
    };
    std::thread::sleep(Duration::from_millis(100));
    let alive = victim.try_wait().unwrap().is_none();
    let _ = victim.kill();
    let _ = victim.wait();
    assert!(
        alive,
        "the timeout's kill hit the process that took runc's pid"
    );
}

/// Issue 14 item 6: only runc's words about the container mean "no such
/// container"; an exec whose binary or cwd is missing failed, nothing more.
#[test]
fn failures_are_classified_by_what_runc_says_about_the_container() {
    let kind = |cmd: &str, m: &str| Failure::of(cmd, m);
    assert_eq!(
        kind("delete", "container does not exist"),
        Failure::NoSuchContainer
    );
    assert_eq!(
        kind("exec", "exec failed: unable to start container process: exec: \"nope\": executable file not found in $PATH"),
        Failure::Other
    );
    assert_eq!(
        kind(
            "exec",
            "chdir to cwd (\"/nope\") set in config.json failed: no such file or directory"
        ),
        Failure::Other
    );
    assert_eq!(kind("update", "container not running"), Failure::NotRunning);
    assert_eq!(
        kind("start", "cannot start an already running container"),
        Failure::Other
    );
}

/// crun words the same facts its own way (crun 1.8's libcrun): the wrapper
/// must read them alike, or Kill of an exited crun container is an error
/// where runc's is "not running".
#[test]
fn crun_failures_are_classified_like_runcs() {
    let kind = |cmd: &str, m: &str| Failure::of(cmd, m);
    assert_eq!(
        kind("exec", "the container `c1` is not running"),
        Failure::NotRunning
    );
    assert_eq!(
        kind(
            "pause",
            "the container `c1` is not running: No such process"
        ),
        Failure::NotRunning
    );
    assert_eq!(
        kind("kill", "kill container: No such process"),
        Failure::NotRunning
    );
    assert_eq!(
        kind("kill", "open pidfd: No such process"),
        Failure::NotRunning
    );
    assert_eq!(
        kind(
            "exec",
            "error opening file `/run/brisk/k8s.io/c1/status`: No such file or directory"
        ),
        Failure::NoSuchContainer
    );
    assert_eq!(
        kind(
            "delete",
            "error opening file `/run/crun/c1/status`: No such file or directory"
        ),
        Failure::NoSuchContainer
    );
    // An exec's own process failing is still the exec's failure.
    assert_eq!(
        kind(
            "exec",
            "executable file `nope` not found in $PATH: No such file or directory"
        ),
        Failure::Other
    );
}
