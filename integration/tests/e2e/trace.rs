//! The W3C trace id of a CRI call reaches the shim's log lines.
//!
//! containerd 2.x continues the trace context a CRI client sends (its gRPC
//! server's otelgrpc handler) and passes its span to the shim in the ttrpc
//! metadata (otelttrpc), once its OTLP tracing plugin is configured; the
//! shim logs the trace id with each request's lines. Here containerd 2.3.4
//! runs with `OTEL_EXPORTER_OTLP_ENDPOINT` at a local port where nothing
//! listens (spans are dropped; the plugin only needs the variable to load)
//! and every span sampled; one UpdateContainerResources carries the test's
//! own `traceparent`, and the shim's line for that Update must show its
//! trace id.
//!
//! containerd 2.3.4 comes from `scripts/build-containerd-from-source.sh DIR`
//! (`BRISK_CONTAINERD_VERSIONS_DIR=DIR`, default
//! `<workspace>/target/containerd-versions`); without it the test is skipped
//! with a message, unless `BRISK_REQUIRE_CONTAINERD_VERSIONS=1`, as in the
//! deploy tests.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use brisk_integration::containerd::workspace_root;
use brisk_integration::{
    ContainerSpec, Containerd, LinuxContainerResources, Options, BRISK_HANDLER,
};

use crate::common;

const RELEASE: &str = "2.3.4";

/// containerd 2.3.4's binary, or None (said why) when this run has none.
fn containerd_2_3() -> Option<PathBuf> {
    let dir = match std::env::var_os("BRISK_CONTAINERD_VERSIONS_DIR") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => workspace_root().join("target/containerd-versions"),
    };
    let tree = dir.join(format!("containerd-{RELEASE}"));
    let bin = tree.join("usr/bin/containerd");
    if tree.join(".complete").exists() && bin.is_file() {
        return Some(bin);
    }
    if std::env::var_os("BRISK_REQUIRE_CONTAINERD_VERSIONS").is_some() {
        panic!(
            "{} missing: run scripts/build-containerd-from-source.sh {}",
            tree.display(),
            dir.display()
        );
    }
    eprintln!(
        "containerd {RELEASE} not in {}: skipping the trace test (scripts/build-containerd-from-source.sh)",
        dir.display()
    );
    None
}

/// A local TCP port where nothing listens: the exporter's sends fail at
/// once, without waiting on a peer.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// A fresh W3C trace id: 32 lower-case hex digits, never zero.
fn fresh_trace_id() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(1);
    format!(
        "{:016x}{:016x}",
        std::process::id() as u64 | 1 << 63,
        t as u64
    )
}

/// The shim's lines (they end with the runtime field) in containerd's log.
fn shim_lines(cd: &Containerd) -> Vec<String> {
    std::fs::read_to_string(&cd.log_path)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.ends_with("runtime=io.containerd.brisk.v2"))
        .map(str::to_string)
        .collect()
}

/// The value of ` key=` in a logfmt line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let at = line.find(&format!(" {key}="))? + key.len() + 2;
    line[at..].split(' ').next()
}

fn is_trace_id(v: &str) -> bool {
    v.len() == 32
        && v.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        && v != "0".repeat(32)
}

/// Waits until a shim line satisfies `want` (containerd copies the shim's
/// log asynchronously).
fn wait_shim_line(cd: &Containerd, what: &str, want: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(l) = shim_lines(cd).into_iter().find(|l| want(l)) {
            return l;
        }
        assert!(
            Instant::now() < deadline,
            "no shim line {what} in containerd's log; shim lines:\n{}",
            shim_lines(cd).join("\n")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_cri_calls_trace_id_is_in_the_shims_lines() {
    let Some(bin) = containerd_2_3() else {
        return;
    };
    let port = closed_port();
    let opts = Options {
        containerd_bin: Some(bin),
        // The shim's per-call line (`task call`) is at debug level.
        debug: true,
        env: vec![
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
                format!("http://127.0.0.1:{port}"),
            ),
            ("OTEL_TRACES_SAMPLER".into(), "always_on".into()),
        ],
        ..Default::default()
    };
    let Some(cd) = common::start_with(BRISK_HANDLER, opts) else {
        return;
    };
    let cri = cd.cri();
    let pod = cri
        .run_pod_sandbox(BRISK_HANDLER, "trace")
        .expect("RunPodSandbox");
    let id = cri
        .run_container(&pod, &ContainerSpec::new("traced", &["sleep", "1000"]))
        .expect("run container");

    // containerd's own CRI spans: the Create of the container carried one.
    let create = wait_shim_line(&cd, "for the create", |l| {
        l.contains(" msg=create ") && field(l, "id") == Some(&id)
    });
    let create_trace = field(&create, "trace_id").unwrap_or_default();
    assert!(
        is_trace_id(create_trace),
        "the create line has no valid trace id: {create}"
    );

    // The test's own trace, as a traced kubelet would send it.
    let trace_id = fresh_trace_id();
    let traceparent = format!("00-{trace_id}-00f067aa0ba902b7-01");
    cri.update_container_resources_with_metadata(
        &id,
        LinuxContainerResources {
            cpu_shares: 512,
            ..Default::default()
        },
        &[("traceparent", &traceparent)],
    )
    .expect("UpdateContainerResources");
    let update = wait_shim_line(&cd, "for the traced update", |l| {
        l.contains(" call=update ") && field(l, "id") == Some(&id) && field(l, "trace_id").is_some()
    });
    assert_eq!(
        field(&update, "trace_id"),
        Some(trace_id.as_str()),
        "the update line carries another trace: {update}"
    );
    let span_id = field(&update, "span_id").unwrap_or_default();
    assert!(
        span_id.len() == 16 && span_id != "00f067aa0ba902b7",
        "containerd's own span of the ttrpc call, not the client's: {update}"
    );
    assert_ne!(create_trace, trace_id, "two CRI calls, two traces");
    eprintln!("shim lines:\n  {create}\n  {update}");

    cri.stop_container(&id, 0).expect("StopContainer");
    cri.remove_container(&id).expect("RemoveContainer");
    common::remove_pod_and_finish(cd, &pod);
}
