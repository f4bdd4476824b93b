//! What kubelet reads from a container's cgroup through the shim: the
//! figures of ContainerStats (`kubectl top`, HPA, evictions) and OOM kills.
//! Run on this host's cgroup v1 and in the cgroup v2 guest lane.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader},
    process::{Child, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use brisk_integration::{ContainerSpec, Containerd, Pod, BRISK_HANDLER, RUNC_HANDLER};

use crate::common::{self, EXIT_TIMEOUT};

const MIB: u64 = 1 << 20;

/// The CPU and memory figures CRI reports for one container.
#[derive(Debug, Clone, Copy)]
struct Figures {
    cpu_s: f64,
    working_set_mib: f64,
    usage_mib: f64,
}

fn figures(cd: &Containerd, id: &str) -> Figures {
    let st = cd.cri().container_stats(id).expect("ContainerStats");
    let cpu = st
        .cpu
        .as_ref()
        .and_then(|c| c.usage_core_nano_seconds.as_ref());
    let mem = st.memory.as_ref();
    let mib = |v: Option<u64>| v.unwrap_or(0) as f64 / MIB as f64;
    Figures {
        cpu_s: cpu.map_or(0, |v| v.value) as f64 / 1e9,
        working_set_mib: mib(mem
            .and_then(|m| m.working_set_bytes.as_ref())
            .map(|v| v.value)),
        usage_mib: mib(mem.and_then(|m| m.usage_bytes.as_ref()).map(|v| v.value)),
    }
}

/// The CPU time the kernel accounted to the container's cgroup, in
/// seconds: cpuacct.usage (ns) on v1, cpu.stat's usage_usec on v2.
fn kernel_cpu_s(cd: &Containerd, id: &str) -> f64 {
    // The container's own cgroup, under either cgroup driver.
    if let Some(p) = cd.cgroup_file(id, "cpuacct.usage") {
        let ns: f64 = std::fs::read_to_string(p).unwrap().trim().parse().unwrap();
        return ns / 1e9;
    }
    let p = cd
        .cgroup_file(id, "cpu.stat")
        .expect("cpu.stat of the container");
    let text = std::fs::read_to_string(p).unwrap();
    let usec: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("usage_usec "))
        .expect("usage_usec")
        .trim()
        .parse()
        .unwrap();
    usec / 1e6
}

/// One pod per shim in one containerd, the same two containers in each: one
/// that burns 2 s of CPU, one that writes a 40 MiB file (page cache,
/// which is not working set) and then holds 64 MiB of anonymous memory.
/// brisk's figures must be right, and match the stock shim's.
#[test]
fn stats_are_right_and_match_the_stock_shim() {
    let Some(cd) = common::start(BRISK_HANDLER) else {
        return;
    };
    let cri = cd.cri();
    let mut seen = HashMap::new();
    for handler in [RUNC_HANDLER, BRISK_HANDLER] {
        let pod = cri
            .run_pod_sandbox(handler, &format!("stats-{handler}"))
            .expect("pod");
        let burn = cri
            .run_container(
                &pod,
                // Spins until the shell itself has used 200 ticks (2 s) of
                // CPU, read from its own /proc stat without forking, so the
                // figure does not depend on how busy the machine is.
                &ContainerSpec::sh(
                    "burn",
                    "while :; do read -r l < /proc/$$/stat; set -- $l; \
                     [ $((${14} + ${15})) -ge 200 ] && break; done; \
                     touch /tmp/done; exec sleep 1000",
                ),
            )
            .expect("burner");
        let hold = cri
            .run_container(
                &pod,
                &ContainerSpec::sh(
                    "hold",
                    "dd if=/dev/zero of=/tmp/file bs=1M count=40 2>/dev/null; \
                     touch /tmp/written; dd if=/dev/zero bs=64M count=1 2>/dev/null | sleep 1000",
                ),
            )
            .expect("holder");
        wait_file_in(&cd, &burn, "/tmp/done");
        wait_file_in(&cd, &hold, "/tmp/written");
        // dd fills its 64 MiB buffer right after the file is written.
        std::thread::sleep(Duration::from_millis(1500));
        let cpu = figures(&cd, &burn);
        let mem = figures(&cd, &hold);
        let kernel = kernel_cpu_s(&cd, &burn);
        eprintln!("{handler}: burner {cpu:?} (kernel: {kernel:.3} s CPU), holder {mem:?}");
        assert!(
            (cpu.cpu_s - kernel).abs() <= 0.05 * kernel + 0.01,
            "{handler}: CRI says {:.3} s of CPU, the cgroup {kernel:.3} s",
            cpu.cpu_s
        );
        assert!(
            (1.6..=2.4).contains(&cpu.cpu_s),
            "{handler}: a busy loop of 2 s of CPU shows {:.3} s",
            cpu.cpu_s
        );
        assert!(
            (64.0..=80.0).contains(&mem.working_set_mib),
            "{handler}: working set {:.1} MiB for 64 MiB held (and a 40 MiB file in the page cache)",
            mem.working_set_mib
        );
        assert!(
            mem.usage_mib >= mem.working_set_mib,
            "{handler}: usage below the working set: {mem:?}"
        );
        seen.insert(handler, (cpu, mem));
        remove_pod(&cd, &pod);
    }
    let (runc_cpu, runc_mem) = seen[RUNC_HANDLER];
    let (brisk_cpu, brisk_mem) = seen[BRISK_HANDLER];
    let close = |a: f64, b: f64| (a - b).abs() <= 0.1 * a.max(b);
    assert!(
        close(runc_mem.working_set_mib, brisk_mem.working_set_mib),
        "working set: stock {runc_mem:?}, brisk {brisk_mem:?}"
    );
    assert!(
        close(runc_cpu.cpu_s, brisk_cpu.cpu_s),
        "CPU: stock {runc_cpu:?}, brisk {brisk_cpu:?}"
    );
    cd.assert_no_leaks();
    cd.finish();
}

/// Number of OOM kills in a row, for the init and for an exec.
const KILLS: usize = 20;

/// Every OOM kill is told exactly once, and CRI shows OOMKilled for an init
/// killed that way every time, although the shim removes the container's
/// cgroup (early `runc delete`) within milliseconds of the exit.
#[test]
fn oom_kills_are_never_lost() {
    let Some(cd) = common::start(BRISK_HANDLER) else {
        return;
    };
    let events = OomEvents::subscribe(&cd);
    let cri = cd.cri();
    let pod = cri.run_pod_sandbox(BRISK_HANDLER, "oom").expect("pod");
    let mut inits = Vec::new();
    for i in 0..KILLS {
        let spec = ContainerSpec::new(
            &format!("oom{i}"),
            &["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"],
        )
        .memory_limit(32 * MIB as i64);
        let id = cri.run_container(&pod, &spec).expect("container");
        let st = cri.wait_for_exited(&id, EXIT_TIMEOUT).expect("exited");
        assert_eq!(
            (st.exit_code, st.reason.as_str()),
            (137, "OOMKilled"),
            "kill {i}: {st:?}"
        );
        cri.remove_container(&id).expect("remove");
        inits.push(id);
    }
    let host = ContainerSpec::new("host", &["sleep", "1000"]).memory_limit(32 * MIB as i64);
    let host = cri.run_container(&pod, &host).expect("exec host");
    for i in 0..KILLS {
        let r = cri
            .exec_sync(
                &host,
                &["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"],
                Duration::from_secs(30),
            )
            .expect("ExecSync");
        assert_eq!(r.exit_code, 137, "exec kill {i}: {r:?}");
    }
    for id in &inits {
        events.wait_for(id, 1);
    }
    events.wait_for(&host, KILLS);
    std::thread::sleep(Duration::from_millis(500));
    for id in &inits {
        assert_eq!(events.count(id), 1, "TaskOOM events of init {id}");
    }
    assert_eq!(
        events.count(&host),
        KILLS,
        "TaskOOM events of the exec host"
    );
    drop(events);
    remove_pod(&cd, &pod);
    cd.assert_no_leaks();
    cd.finish();
}

fn remove_pod(cd: &Containerd, pod: &Pod) {
    cd.cri().stop_pod(&pod.id).expect("stop pod");
    cd.cri().remove_pod(&pod.id).expect("remove pod");
}

fn wait_file_in(cd: &Containerd, id: &str, path: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = cd
            .cri()
            .exec_sync(id, &["test", "-e", path], Duration::from_secs(10))
            .expect("ExecSync");
        if r.exit_code == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "{path} never appeared in {id}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `/tasks/oom` events of the k8s.io namespace, counted per container, from
/// `ctr events`.
struct OomEvents {
    child: Child,
    counts: Arc<Mutex<HashMap<String, usize>>>,
}

impl OomEvents {
    fn subscribe(cd: &Containerd) -> Self {
        let mut child = cd
            .ctr_in("k8s.io")
            .command(&["events"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("ctr events");
        let counts = Arc::new(Mutex::new(HashMap::new()));
        let out = child.stdout.take().unwrap();
        let c = counts.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if !line.contains("/tasks/oom") {
                    continue;
                }
                let Some(json) = line.find('{').map(|i| &line[i..]) else {
                    continue;
                };
                let v: serde_json::Value = serde_json::from_str(json).unwrap_or_default();
                if let Some(id) = v["container_id"].as_str() {
                    *c.lock().unwrap().entry(id.to_string()).or_default() += 1;
                }
            }
        });
        // ctr subscribes before it prints anything; give it that moment.
        std::thread::sleep(Duration::from_millis(500));
        OomEvents { child, counts }
    }

    fn count(&self, id: &str) -> usize {
        self.counts.lock().unwrap().get(id).copied().unwrap_or(0)
    }

    fn wait_for(&self, id: &str, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.count(id) < n {
            assert!(
                Instant::now() < deadline,
                "{} TaskOOM of {id} after 10 s, want {n}",
                self.count(id)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for OomEvents {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
