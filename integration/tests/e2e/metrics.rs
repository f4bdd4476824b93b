//! `brisk-ctl exporter` scraped by a real Prometheus (Debian's 2.42): the
//! figures of a pod's shim reach PromQL, and the exporter's CRI probe shows
//! what a stall costs.
//!
//! umount2 is delayed 10 s on the pod's shim from when its container runs
//! (strace attached then, so runc's own umount2 at start is not delayed):
//! each exit adds one unmount to `brisk_rootfs_unmount_duration_seconds`
//! and about the delay per umount2 call to its sum (the shim calls umount2
//! until EINVAL: once when containerd's bundle cleanup unmounted the rootfs
//! first, as it mostly does, else twice), while the CRI ListContainers
//! probe stays under 100 ms.
//!
//! The same exit under the stock shim, with a kubelet-like Update every
//! second (without Updates nothing takes CRI's container lock, and the
//! stock shim does not stall CRI either; `exiting.rs` runs brisk with
//! them): the probe's list stalls behind the unmount, and the ContainerStatus
//! probe names the stock container as the slowest. That stall shows in the
//! list only up to containerd 2.2 (see `exiting.rs`); this test runs in the
//! default lane.
//!
//! Prometheus also evaluates every expression of the Grafana dashboard
//! (configs/grafana), and promtool checks and unit-tests the alert rules.

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use std::sync::atomic::{AtomicBool, Ordering};

use brisk_integration::{
    cri::ContainerSpec, fault::UmountDelay, scenario::update_loop, Containerd, Cri, BRISK_HANDLER,
    RUNC_HANDLER,
};

use crate::common::{self, exit_on_go, go};

const DELAY: Duration = Duration::from_secs(10);

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

/// Prometheus's whole answer to a PromQL instant query.
fn query_json(port: u16, promql: &str) -> Option<serde_json::Value> {
    let mut q = String::new();
    for b in promql.bytes() {
        if b.is_ascii_alphanumeric() || b"_-.".contains(&b) {
            q.push(b as char);
        } else {
            q.push_str(&format!("%{b:02X}"));
        }
    }
    let body = http_get(port, &format!("/api/v1/query?query={q}")).ok()?;
    serde_json::from_str(&body).ok()
}

/// The value of a PromQL instant query that yields one sample, or None.
fn query(port: u16, promql: &str) -> Option<f64> {
    let v = query_json(port, promql)?;
    v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

/// A range selector covering the last `since` (and a scrape more).
fn window(since: Instant) -> String {
    format!("[{}s]", since.elapsed().as_secs() + 3)
}

/// The list probe's calls since `since`: how many took over `le` seconds
/// (a bucket bound), how many in all, and their seconds. Read from the
/// histogram: the "last" gauge is overwritten by the next probe within a
/// list interval, so a scrape can miss a slow one.
fn lists_since(prom: u16, since: Instant, le: &str) -> (f64, f64, f64) {
    let w = window(since);
    let inc = |series: &str| {
        query(
            prom,
            &format!("sum(increase(brisk_cri_list_containers_duration_seconds{series}{w}))"),
        )
        .unwrap_or(f64::NAN)
    };
    let all = inc("_bucket{le=\"+Inf\"}");
    (
        all - inc(&format!("_bucket{{le=\"{le}\"}}")),
        all,
        inc("_sum"),
    )
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

fn promtool(args: &[&str]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/prometheus");
    let out = Command::new("promtool")
        .args(args)
        .current_dir(&dir)
        .output()
        .expect("run promtool (apt-get install prometheus)");
    assert!(
        out.status.success(),
        "promtool {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr)
    );
}

/// The exporter (probing every second) and a Prometheus scraping it.
struct Monitoring {
    prom_port: u16,
    exporter_port: u16,
    // Dropped in this order: Prometheus, then the exporter.
    _prometheus: Started,
    _exporter: Started,
}

impl Monitoring {
    fn start(cd: &Containerd) -> Self {
        let dir = tempfile_dir(cd);
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
        Monitoring {
            prom_port,
            exporter_port,
            _prometheus: prometheus,
            _exporter: exporter,
        }
    }
}

/// Two exits of a brisk pod's containers with umount2 delayed: returns the
/// pod (its shim still serving), the unmount seconds per exit and the list
/// probes meanwhile (see [`lists_since`], over 100 ms).
fn brisk_exits(
    cd: &Containerd,
    cri: &Cri,
    prom: u16,
) -> (brisk_integration::Pod, f64, (f64, f64, f64)) {
    let pod = cri.run_pod_sandbox(BRISK_HANDLER, "metrics").expect("pod");
    let shim = *common::handler_shims(cd, BRISK_HANDLER)
        .first()
        .expect("the pod's shim");
    wait_query(prom, "brisk_shims", |v| v >= 1.0, Duration::from_secs(60));
    let before = wait_query(
        prom,
        "brisk_rootfs_unmount_duration_seconds_count",
        |_| true,
        Duration::from_secs(10),
    );
    let sum_before = query(prom, "brisk_rootfs_unmount_duration_seconds_sum").unwrap_or(0.0);
    let started = Instant::now();
    let exits = 2;
    for i in 0..exits {
        let c = cri
            .run_container(
                &pod,
                &ContainerSpec::sh(&format!("exits{i}"), &exit_on_go(0)),
            )
            .expect("container");
        let strace = UmountDelay::attach(shim, DELAY).expect("strace");
        go(cd, &c);
        cri.wait_for_exited(&c, Duration::from_secs(30))
            .expect("EXITED");
        let want = before + (i + 1) as f64;
        let got = wait_query(
            prom,
            "brisk_rootfs_unmount_duration_seconds_count",
            |v| v >= want,
            Duration::from_secs(90),
        );
        assert_eq!(got, want, "one unmount per exit");
        drop(strace);
        cri.remove_container(&c).expect("remove");
    }
    let sum = query(prom, "brisk_rootfs_unmount_duration_seconds_sum").expect("sum") - sum_before;
    // The last list's figures land with the next scrape.
    std::thread::sleep(Duration::from_secs(2));
    let status = query(
        prom,
        &format!(
            "max(max_over_time(brisk_cri_container_status_slowest_seconds{{container=~\"exits.*\"}}{}))",
            window(started)
        ),
    )
    .unwrap_or(f64::NAN);
    eprintln!(
        "brisk: slowest ContainerStatus of its exiting containers {:.1} ms",
        status * 1000.0
    );
    (pod, sum / exits as f64, lists_since(prom, started, "0.1"))
}

/// One exit of a stock pod's container with umount2 delayed and a
/// kubelet-like Update every second: returns the list probes meanwhile
/// (see [`lists_since`], over 5 s) and the slowest status the probe named
/// for the container.
fn stock_exit(cd: &Containerd, cri: &Cri, prom: u16) -> ((f64, f64, f64), f64) {
    let pod = cri
        .run_pod_sandbox(RUNC_HANDLER, "metrics-stock")
        .expect("stock pod");
    let shim = *common::handler_shims(cd, RUNC_HANDLER)
        .first()
        .expect("the stock pod's shim");
    let c = cri
        .run_container(&pod, &ContainerSpec::sh("stock-exit", &exit_on_go(0)))
        .expect("stock container");
    let started = Instant::now();
    let strace = UmountDelay::attach(shim, DELAY).expect("strace");
    let (stop, exited) = (AtomicBool::new(false), AtomicBool::new(false));
    let updates = std::thread::scope(|s| {
        let updater = s.spawn(|| update_loop(cri, &c, &stop, &exited));
        // Let the probe list the container, and an Update or two pass.
        std::thread::sleep(Duration::from_secs(3));
        go(cd, &c);
        let r = cri.wait_for_exited(&c, Duration::from_secs(180));
        exited.store(true, Ordering::SeqCst);
        stop.store(true, Ordering::SeqCst);
        let updates = updater.join().unwrap();
        r.expect("stock container EXITED");
        updates
    });
    eprintln!("stock: kubelet-like Updates: {updates:?}");
    // The stalled calls end with the unmount; give the probe's figures a
    // scrape to land.
    std::thread::sleep(Duration::from_secs(3));
    let lists = lists_since(prom, started, "5.0");
    let status = query(
        prom,
        &format!(
            "max(max_over_time(brisk_cri_container_status_slowest_seconds{{container=\"stock-exit\"}}{}))",
            window(started)
        ),
    )
    .unwrap_or(0.0);
    drop(strace);
    cri.remove_container(&c).expect("remove stock container");
    cri.stop_pod(&pod.id).expect("stop stock pod");
    cri.remove_pod(&pod.id).expect("remove stock pod");
    (lists, status)
}

/// Every expression of the Grafana dashboard, evaluated by Prometheus:
/// each must be valid PromQL over the exporter's names, and those about
/// what this test did must have data.
fn check_dashboard(prom: u16) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/grafana/brisk-node.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("dashboard")).expect("JSON");
    let mut empty = Vec::new();
    let mut n = 0;
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            let promql = expr.replace("$__rate_interval", "1m");
            let v = query_json(prom, &promql).expect("Prometheus answers");
            assert_eq!(
                v["status"], "success",
                "dashboard panel {:?}: {expr}: {v}",
                panel["title"]
            );
            if v["data"]["result"].as_array().is_none_or(|r| r.is_empty()) {
                empty.push(expr.to_string());
            }
            n += 1;
        }
    }
    eprintln!("dashboard: {n} expressions valid; without data in this run: {empty:#?}");
    for must in [
        "brisk_cri_list_containers_last_duration_seconds",
        "brisk_cri_container_status_slowest_seconds",
        "brisk_rootfs_unmount_duration_seconds_sum",
        "brisk_task_request_duration_seconds_bucket",
        "brisk_shim_rss_bytes",
    ] {
        assert!(
            !empty.iter().any(|e| e.contains(must)),
            "dashboard expressions on {must} have no data: {empty:?}"
        );
    }
}

#[test]
fn prometheus_sees_each_slow_unmount_and_a_fast_list_probe() {
    let Some(cd) = common::start(BRISK_HANDLER) else {
        return;
    };
    promtool(&["check", "rules", "brisk-alerts.yml"]);
    promtool(&["test", "rules", "brisk-alerts.test.yml"]);
    let mon = Monitoring::start(&cd);
    let prom = mon.prom_port;
    let cri = cd.cri();

    let (pod, per_exit, (slow, lists, list_secs)) = brisk_exits(&cd, cri, prom);
    eprintln!("brisk: unmount seconds per exit with umount2 delayed {DELAY:?}: {per_exit:.2}");
    eprintln!(
        "brisk: {lists:.0} CRI ListContainers probes, {:.0} over 100 ms, {:.1} ms each on average",
        slow.max(0.0),
        1000.0 * list_secs / lists
    );
    let d = DELAY.as_secs_f64();
    assert!(
        per_exit >= 0.9 * d && per_exit < 2.0 * d + 2.0,
        "unmount seconds per exit {per_exit:.2}: want about {d} per umount2 call (one or two)"
    );
    assert!(lists >= 10.0, "too few list probes: {lists:.1}");
    assert!(
        slow < 0.5,
        "{slow:.1} ListContainers probes took over 100 ms while unmounts were slow"
    );
    let text = http_get(mon.exporter_port, "/metrics").expect("exporter");
    for name in [
        "brisk_task_request_duration_seconds_count{method=\"create\"}",
        "brisk_runc_duration_seconds_count{command=\"create\"}",
        "brisk_exits_published_total",
        "brisk_shim_rss_bytes{",
        "brisk_rootfs_mounts_total{volatile=",
        "brisk_cri_list_containers_duration_seconds_bucket",
        "brisk_cri_container_status_duration_seconds_bucket",
        "brisk_cri_container_status_slowest_seconds{container_id=",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics:\n{text}");
    }
    check_dashboard(prom);
    cri.stop_pod(&pod.id).expect("stop pod");
    cri.remove_pod(&pod.id).expect("remove pod");

    let ((stock_slow, stock_lists, stock_secs), stock_status) = stock_exit(&cd, cri, prom);
    eprintln!(
        "stock: {stock_lists:.0} CRI ListContainers probes, {stock_slow:.0} over 5 s, {stock_secs:.1} s in all; slowest ContainerStatus of its container {stock_status:.2} s"
    );
    if cd.containerd_version < (2, 3, 0) {
        assert!(
            stock_slow >= 0.5 && stock_secs >= d / 2.0,
            "the list probe should show the stock shim's stall: {stock_slow:.1} lists over 5 s, {stock_secs:.1} s"
        );
        assert!(
            stock_status >= d / 2.0,
            "the status probe should name the stock container as the slowest: {stock_status:.2} s"
        );
    }
    // Before the leak check, which counts anything naming containerd's socket.
    drop(mon);
    cd.wait_no_leaks(Duration::from_secs(60))
        .expect("no leaks once the delayed unmounts are done");
    cd.finish();
}

/// A directory for the test's own files, inside the harness's (removed with it).
fn tempfile_dir(cd: &brisk_integration::Containerd) -> PathBuf {
    let d = cd.dir.join("metrics-test");
    std::fs::create_dir_all(&d).unwrap();
    d
}
