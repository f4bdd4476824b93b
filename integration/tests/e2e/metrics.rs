//! `brisk-ctl exporter` scraped by a real Prometheus (Debian's 2.42): the
//! figures of a pod's shim reach PromQL. umount2 is delayed on the pod's
//! shim (2 s per call, shorter than the 10 s to keep CI time down):
//! each exit adds one unmount to `brisk_rootfs_unmount_duration_seconds`
//! and about the delay per umount2 call to its sum (the shim calls umount2
//! until EINVAL: once when containerd's bundle cleanup unmounted the rootfs
//! first, as it mostly does, else twice), while the CRI ListContainers
//! probe stays fast.

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use brisk_integration::{cri::ContainerSpec, fault::UmountDelay, BRISK_HANDLER};

use crate::common::{self, exit_on_go, go};

const DELAY: Duration = Duration::from_secs(2);

/// A process this test started, killed by its PID and reaped on drop.
struct Started(Child, &'static str);

impl Drop for Started {
    fn drop(&mut self) {
        // SAFETY: kill on the pid of our own unreaped child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("{} did not stop on SIGTERM; SIGKILL", self.1);
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn ctl_bin() -> PathBuf {
    match std::env::var_os("BRISK_CTL_BIN") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => brisk_integration::containerd::brisk_shim_bin().with_file_name("brisk-ctl"),
    }
}

/// The body of an HTTP/1.0 GET of `path` on 127.0.0.1:`port`.
fn http_get(port: u16, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    Ok(text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default())
}

/// The value of a PromQL instant query that yields one sample, or None.
fn query(port: u16, promql: &str) -> Option<f64> {
    let mut q = String::new();
    for b in promql.bytes() {
        if b.is_ascii_alphanumeric() || b"_-.".contains(&b) {
            q.push(b as char);
        } else {
            q.push_str(&format!("%{b:02X}"));
        }
    }
    let body = http_get(port, &format!("/api/v1/query?query={q}")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

fn wait_query(port: u16, promql: &str, ok: impl Fn(f64) -> bool, within: Duration) -> f64 {
    let deadline = Instant::now() + within;
    loop {
        let v = query(port, promql);
        if let Some(v) = v.filter(|v| ok(*v)) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{promql}: {v:?} after {within:?}, not what was wanted"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn start_prometheus(dir: &Path, exporter_port: u16, port: u16) -> Started {
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: brisk\n    scrape_interval: 1s\n    static_configs:\n      - targets: ['127.0.0.1:{exporter_port}']\n"
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn prometheus (apt-get install prometheus; scripts/install-deps.sh)");
    Started(child, "prometheus")
}

#[test]
fn prometheus_sees_each_slow_unmount_and_a_fast_list_probe() {
    let Some(cd) = common::start(BRISK_HANDLER) else {
        return;
    };
    let rules =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/prometheus/brisk-alerts.yml");
    let checked = Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(&rules)
        .output()
        .expect("run promtool (apt-get install prometheus)");
    assert!(
        checked.status.success(),
        "promtool check rules: {}",
        String::from_utf8_lossy(&checked.stdout) + String::from_utf8_lossy(&checked.stderr)
    );

    let dir = tempfile_dir(&cd);
    let exporter_port = free_port();
    let exporter = Command::new(ctl_bin())
        .arg("--address")
        .arg(&cd.socket)
        .arg("exporter")
        .arg("--listen")
        .arg(format!("127.0.0.1:{exporter_port}"))
        .arg("--state")
        .arg(cd.dir.join("state"))
        .args(["--list-interval", "1"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("exporter.log")).unwrap())
        .spawn()
        .expect("spawn brisk-ctl exporter");
    let exporter = Started(exporter, "brisk-ctl exporter");
    let prom_port = free_port();
    let prometheus = start_prometheus(&dir, exporter_port, prom_port);

    let cri = cd.cri();
    let pod = cri.run_pod_sandbox(BRISK_HANDLER, "metrics").expect("pod");
    let shim = *common::handler_shims(&cd, BRISK_HANDLER)
        .first()
        .expect("the pod's shim");
    wait_query(
        prom_port,
        "brisk_shims",
        |v| v >= 1.0,
        Duration::from_secs(60),
    );
    let before = wait_query(
        prom_port,
        "brisk_rootfs_unmount_duration_seconds_count",
        |_| true,
        Duration::from_secs(10),
    );
    let sum_before = query(prom_port, "brisk_rootfs_unmount_duration_seconds_sum").unwrap_or(0.0);
    let strace = UmountDelay::attach(shim, DELAY).expect("strace");
    let exits = 2;
    for i in 0..exits {
        let c = cri
            .run_container(
                &pod,
                &ContainerSpec::sh(&format!("exits{i}"), &exit_on_go(0)),
            )
            .expect("container");
        go(&cd, &c);
        cri.wait_for_exited(&c, Duration::from_secs(30))
            .expect("EXITED");
        let want = before + (i + 1) as f64;
        let got = wait_query(
            prom_port,
            "brisk_rootfs_unmount_duration_seconds_count",
            |v| v >= want,
            Duration::from_secs(60),
        );
        assert_eq!(got, want, "one unmount per exit");
        cri.remove_container(&c).expect("remove");
    }
    drop(strace);
    let sum =
        query(prom_port, "brisk_rootfs_unmount_duration_seconds_sum").expect("sum") - sum_before;
    let per_exit = sum / exits as f64;
    eprintln!("unmount seconds per exit with umount2 delayed {DELAY:?}: {per_exit:.2}");
    let d = DELAY.as_secs_f64();
    assert!(
        per_exit >= 0.9 * d && per_exit < 2.0 * d + 2.0,
        "unmount seconds per exit {per_exit:.2}: want about {d} per umount2 call (one or two)"
    );
    let list = query(
        prom_port,
        "max_over_time(brisk_cri_list_containers_last_duration_seconds[5m])",
    )
    .expect("list probe");
    eprintln!("slowest CRI ListContainers probe: {:.1} ms", list * 1000.0);
    assert!(
        list < 0.1,
        "ListContainers took {list:.3} s while unmounts were slow"
    );
    let text = http_get(exporter_port, "/metrics").expect("exporter");
    for name in [
        "brisk_task_request_duration_seconds_count{method=\"create\"}",
        "brisk_runc_duration_seconds_count{command=\"create\"}",
        "brisk_exits_published_total",
        "brisk_shim_rss_bytes{",
        "brisk_rootfs_mounts_total{volatile=",
        "brisk_cri_list_containers_duration_seconds_bucket",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics:\n{text}");
    }
    // Before the leak check, which counts anything naming containerd's socket.
    drop(prometheus);
    drop(exporter);
    common::remove_pod_and_finish(cd, &pod);
}

/// A directory for the test's own files, inside the harness's (removed with it).
fn tempfile_dir(cd: &brisk_integration::Containerd) -> PathBuf {
    let d = cd.dir.join("metrics-test");
    std::fs::create_dir_all(&d).unwrap();
    d
}
