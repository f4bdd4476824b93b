//! runc's environment. A test binary of its own: it sets a variable in its
//! own process environment, which no other test may see change under it.

use std::{path::Path, sync::Arc};

use runc_wrapper::{DirectWait, Runc};

/// containerd under systemd (`Type=notify`) has `NOTIFY_SOCKET` in its
/// environment and passes it to every shim. runc given it creates a notify
/// socket under its root, whose path passes the 108-byte limit for a
/// 64-character id, and `runc start` fails. runc must never see it.
#[tokio::test]
async fn runc_never_sees_notify_socket() {
    let dir = tempfile::tempdir().unwrap();
    let env_out = dir.path().join("env");
    let script = dir.path().join("runc");
    write_script(
        &script,
        &format!("#!/bin/sh\nenv > '{}'\n", env_out.display()),
    );
    // Set before any runc child starts; this binary runs one test only.
    std::env::set_var("NOTIFY_SOCKET", "/run/systemd/notify");
    let runc = Runc::new(&script, dir.path().join("root"), Arc::new(DirectWait));
    runc.resume("c1").await.unwrap();
    let env = std::fs::read_to_string(&env_out).unwrap();
    assert!(env.contains("PATH="), "the environment was recorded: {env}");
    assert!(
        !env.lines().any(|l| l.starts_with("NOTIFY_SOCKET=")),
        "runc got NOTIFY_SOCKET:\n{env}"
    );
}

fn write_script(path: &Path, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, body).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}
