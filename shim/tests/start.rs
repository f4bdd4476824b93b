//! The shim binary as containerd runs it for `start` and `-info`, with each
//! stdin format containerd writes (2.3's BootstrapParams, the bare options
//! Any of earlier releases, nothing) and with bad input. No root needed: the
//! socket goes into the `socket_dir` the bootstrap message names.

use std::{
    io::Write,
    os::unix::{fs::PermissionsExt, net::UnixStream},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use brisk_shim::protos::bootstrap::{BootstrapParams, BootstrapResult, Extension};
use containerd_shim_protos::{
    api::{ConnectRequest, ShutdownRequest},
    protobuf::{well_known_types::any::Any, Message, MessageField},
    shim::oci::Options as RuncOptions,
    ttrpc,
    types::introspection::RuntimeInfo,
    Client, TaskClient,
};

const SHIM: &str = env!("CARGO_BIN_EXE_containerd-shim-brisk-v2");
const ID: &str = "c0ffee";
const NS: &str = "brisk-test";

/// Runs the shim with `args`, `stdin` and the working directory `cwd`, as
/// containerd does (stdout and stderr captured, so `start` must not leave
/// them open in the shim it launches, or this would not return).
fn shim(cwd: &Path, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(SHIM)
        .args(args)
        .current_dir(cwd)
        .env("TTRPC_ADDRESS", cwd.join("no-containerd.sock.ttrpc"))
        .env("NOTIFY_SOCKET", "/run/systemd/notify")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the shim binary");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let started = Instant::now();
    let out = child.wait_with_output().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{args:?} took {:?}",
        started.elapsed()
    );
    out
}

fn start_args() -> Vec<&'static str> {
    vec![
        "-namespace",
        NS,
        "-id",
        ID,
        "-address",
        "/run/test/containerd.sock",
        "start",
    ]
}

fn runc_options() -> Any {
    Any {
        type_url: "containerd.runc.v1.Options".into(),
        value: RuncOptions {
            binary_name: "runc".into(),
            ..Default::default()
        }
        .write_to_bytes()
        .unwrap(),
        ..Default::default()
    }
}

fn bootstrap_params(socket_dir: &Path) -> Vec<u8> {
    BootstrapParams {
        instance_id: ID.into(),
        namespace: NS.into(),
        containerd_version: "2.3.4".into(),
        containerd_grpc_address: "/run/test/containerd.sock".into(),
        containerd_ttrpc_address: "/run/test/containerd.sock.ttrpc".into(),
        extensions: vec![Extension {
            value: MessageField::some(runc_options()),
            ..Default::default()
        }],
        socket_dir: Some(socket_dir.to_string_lossy().into_owned()),
        ..Default::default()
    }
    .write_to_bytes()
    .unwrap()
}

/// A bundle directory with a minimal config.json, and a socket directory.
fn bundle() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), r#"{"ociVersion":"1.0.2"}"#).unwrap();
    let sockets = dir.path().join("s");
    (dir, sockets)
}

/// Talks to the shim at `address`, checks it is a live brisk shim, asks it
/// to shut down (it has no containers) and waits for its socket to go.
fn connect_and_shut_down(address: &str) {
    let path = address.strip_prefix("unix://").expect("unix:// address");
    let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "socket mode");
    let client = TaskClient::new(Client::connect(address).expect("connect"));
    let ctx = ttrpc::context::with_timeout(5_000_000_000);
    let reply = client
        .connect(
            ctx.clone(),
            &ConnectRequest {
                id: ID.into(),
                ..Default::default()
            },
        )
        .expect("Connect");
    assert!(reply.shim_pid > 0);
    let environ = std::fs::read(format!("/proc/{}/environ", reply.shim_pid)).unwrap();
    assert!(
        !environ
            .split(|b| *b == 0)
            .any(|v| v.starts_with(b"NOTIFY_SOCKET=")),
        "the shim kept NOTIFY_SOCKET"
    );
    client
        .shutdown(ctx, &ShutdownRequest::default())
        .expect("Shutdown");
    let deadline = Instant::now() + Duration::from_secs(10);
    while Path::new(path).exists() || Path::new(&format!("/proc/{}", reply.shim_pid)).exists() {
        assert!(Instant::now() < deadline, "shim or its socket still there");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn start_with_bootstrap_params_answers_a_bootstrap_result_and_serves() {
    let (dir, sockets) = bundle();
    let out = shim(dir.path(), &start_args(), &bootstrap_params(&sockets));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result = BootstrapResult::parse_from_bytes(&out.stdout).expect("a BootstrapResult");
    assert_eq!(result.version, 2, "brisk serves Task API v2");
    assert_eq!(result.protocol, "ttrpc");
    assert!(
        result
            .address
            .starts_with(&format!("unix://{}/", sockets.display())),
        "socket in the socket_dir: {}",
        result.address
    );
    let written = std::fs::read_to_string(dir.path().join("address")).unwrap();
    assert_eq!(written, result.address);
    let mode = std::fs::metadata(&sockets).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "socket directory mode");

    // A second container of the pod finds the same shim.
    let again = shim(dir.path(), &start_args(), &bootstrap_params(&sockets));
    assert!(again.status.success());
    let again = BootstrapResult::parse_from_bytes(&again.stdout).unwrap();
    assert_eq!(again.address, result.address);
    connect_and_shut_down(&result.address);
}

#[test]
fn start_with_a_legacy_options_any_answers_the_plain_address() {
    let (dir, sockets) = bundle();
    // Up to 2.2 there is no socket_dir: the socket goes to /run/containerd/s.
    let out = shim(
        dir.path(),
        &start_args(),
        &runc_options().write_to_bytes().unwrap(),
    );
    if out.status.success() {
        let address = String::from_utf8(out.stdout).unwrap();
        assert!(
            address.starts_with("unix:///run/containerd/s/"),
            "{address}"
        );
        connect_and_shut_down(&address);
    } else {
        // Not root: /run/containerd/s cannot be created. The error is about
        // that directory, not about stdin.
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("socket directory /run/containerd/s"), "{err}");
    }
    assert!(!sockets.exists());
}

#[test]
fn start_with_garbage_on_stdin_is_a_clear_error() {
    let (dir, _) = bundle();
    let out = shim(
        dir.path(),
        &start_args(),
        b"\xff\xfe garbage that is not protobuf",
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("neither containerd 2.3's BootstrapParams"),
        "{err}"
    );
    assert!(!err.contains("WireError"), "{err}");
    assert!(!dir.path().join("address").exists());
}

#[test]
fn start_with_an_unknown_options_type_names_it() {
    let (dir, _) = bundle();
    let any = Any {
        type_url: "io.example.v1.Options".into(),
        ..Default::default()
    };
    let out = shim(dir.path(), &start_args(), &any.write_to_bytes().unwrap());
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unsupported runtime options type \"io.example.v1.Options\""),
        "{err}"
    );
}

#[test]
fn info_answers_runtime_info_with_runc_features() {
    let dir = tempfile::tempdir().unwrap();
    for stdin in [Vec::new(), runc_options().write_to_bytes().unwrap()] {
        let out = shim(dir.path(), &["-info"], &stdin);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let info = RuntimeInfo::parse_from_bytes(&out.stdout).expect("RuntimeInfo");
        assert_eq!(info.name, "io.containerd.brisk.v2");
        let runc_has_features = Command::new("runc")
            .arg("features")
            .output()
            .is_ok_and(|o| o.status.success());
        if runc_has_features {
            let f = info.features.as_ref().expect("features");
            let v: serde_json::Value = serde_json::from_slice(&f.value).unwrap();
            assert!(v.get("ociVersionMax").is_some(), "{v}");
        }
        assert_eq!(info.options.is_some(), !stdin.is_empty());
    }
}

#[test]
fn a_shim_not_launched_by_start_refuses_to_serve() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("sock");
    let out = shim(
        dir.path(),
        &[
            "-namespace",
            NS,
            "-id",
            ID,
            "-socket",
            &format!("unix://{}", socket.display()),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("fd 3 is not the listening socket"), "{err}");
    assert!(UnixStream::connect(&socket).is_err());
}
