//! Log URIs of `ctr run --log-uri`: `binary://` (a logging binary the shim
//! starts: environment, fds 3/4/5, query arguments) and `file://` (stdout and
//! stderr appended to one file).

use std::path::Path;

use brisk_integration::cri::BUSYBOX_IMAGE;

use crate::common;

/// `sh -c` script of the containers: a line on each stream.
const SCRIPT: &str = "echo out-line; echo err-line >&2";

/// `ctr run --rm --log-uri URI` of busybox running `cmd`.
fn ctr_run(
    cd: &brisk_integration::Containerd,
    handler: &str,
    id: &str,
    uri: &str,
    cmd: &[&str],
) -> std::process::Output {
    cd.ctr()
        .expect("ctr namespace with images")
        .run_rm_with(
            common::runtime_type(handler),
            Some(&cd.ctr_cgroup(id)),
            &["--log-uri", uri],
            BUSYBOX_IMAGE,
            id,
            cmd,
        )
        .expect("ctr run")
}

fn run_with_log_uri(cd: &brisk_integration::Containerd, handler: &str, id: &str, uri: &str) {
    let out = ctr_run(cd, handler, id, uri, &["sh", "-c", SCRIPT]);
    assert!(
        out.status.success(),
        "ctr run --log-uri {uri} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A logger that records what it was given, says it is ready by closing
/// fd 5, then copies fd 3 and fd 4 to files.
fn write_logger(dir: &Path) -> std::path::PathBuf {
    let script = dir.join("logger.sh");
    let d = dir.display();
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n\
             echo \"id=$CONTAINER_ID ns=$CONTAINER_NAMESPACE args=$*\" >{d}/logger.env\n\
             exec 5>&-\n\
             /bin/cat <&3 >>{d}/logger.stdout &\n\
             /bin/cat <&4 >>{d}/logger.stderr &\n\
             wait\n\
             echo done >{d}/logger.done\n"
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

fn binary_log_uri(handler: &str) {
    let Some(cd) = common::start(handler) else {
        return;
    };
    let dir = cd.dir.join("binlog");
    std::fs::create_dir_all(&dir).unwrap();
    let logger = write_logger(&dir);
    let uri = format!("binary://{}?--tag=t1", logger.display());
    run_with_log_uri(&cd, handler, "binlog", &uri);
    let env = common::wait_file_contains(&dir.join("logger.env"), "id=");
    assert_eq!(
        env.trim(),
        format!("id=binlog ns={} args=--tag t1", cd.tag),
        "logger environment and arguments"
    );
    common::wait_file_contains(&dir.join("logger.stdout"), "out-line\n");
    common::wait_file_contains(&dir.join("logger.stderr"), "err-line\n");
    // brisk keeps no end of the pipes, so the logger reads to EOF at the
    // container's exit and ends by itself. (The stock shim holds them until
    // the delete and then ends the logger with SIGTERM.)
    if handler == brisk_integration::BRISK_HANDLER {
        common::wait_file_contains(&dir.join("logger.done"), "done");
    }
    let stdout = std::fs::read_to_string(dir.join("logger.stdout")).unwrap();
    assert!(!stdout.contains("err-line"), "stderr apart: {stdout}");
    cd.assert_no_leaks();
    cd.finish();
}

fn file_log_uri(handler: &str) {
    let Some(cd) = common::start(handler) else {
        return;
    };
    let dir = cd.dir.join("filelog");
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("out.log");
    run_with_log_uri(
        &cd,
        handler,
        "filelog",
        &format!("file://{}", log.display()),
    );
    let s = common::wait_file_contains(&log, "err-line\n");
    assert!(
        s.contains("out-line\n"),
        "both streams in {}: {s}",
        log.display()
    );
    cd.assert_no_leaks();
    cd.finish();
}

/// A logging binary that does not exist: the create fails naming it, and
/// nothing is left behind.
fn missing_log_binary(handler: &str) {
    let Some(cd) = common::start(handler) else {
        return;
    };
    let ctr = cd.ctr().expect("ctr namespace with images");
    let id = "nolog";
    let missing = cd.dir.join("no-such-logger");
    let uri = format!("binary://{}", missing.display());
    let out = ctr_run(&cd, handler, id, &uri, &["true"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "ctr run with {uri} succeeded");
    assert!(
        stderr.contains(&*missing.to_string_lossy()),
        "error names the logging binary: {stderr}"
    );
    let _ = ctr.output(&["containers", "rm", id]);
    cd.assert_no_leaks();
    cd.finish();
}

crate::handler_tests!(binary_log_uri, file_log_uri, missing_log_binary);
