//! What kubelet reads from a container's cgroup through the shim: the
//! figures of ContainerStats (`kubectl top`, HPA, evictions) and OOM kills.
//! Run on this host's cgroup v1 and in the cgroup v2 guest lane.

use std::{
    collections::HashMap,
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
        // Looked for from the host: an exec into the burner would add its
        // own CPU (runc init) to the figure, which in a TCG guest is ~1 s.
        wait_file_on_host(&cd, &burn, "tmp/done");
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
            "kill {i}: {st:?}\n{}",
            log_lines_of(&cd, &id)
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

/// What containerd and the shim logged about container `id`.
fn log_lines_of(cd: &Containerd, id: &str) -> String {
    let log = std::fs::read_to_string(&cd.log_path).unwrap_or_default();
    log.lines()
        .filter(|l| l.contains(id))
        .collect::<Vec<_>>()
        .join("\n")
}

fn wait_file_on_host(cd: &Containerd, id: &str, path: &str) {
    let file = common::rootfs_of(cd, id).join(path);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !file.exists() {
        assert!(Instant::now() < deadline, "{path} never appeared in {id}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `/tasks/oom` events of the k8s.io namespace, counted per container, from
/// `ctr events`.
struct OomEvents(common::CtrEvents);

impl OomEvents {
    fn subscribe(cd: &Containerd) -> Self {
        OomEvents(common::CtrEvents::start(cd))
    }

    fn count(&self, id: &str) -> usize {
        self.0
            .lines()
            .iter()
            .filter(|l| l.contains("/tasks/oom"))
            .filter_map(|l| {
                let json = &l[l.find('{')?..];
                let v: serde_json::Value = serde_json::from_str(json).ok()?;
                (v["container_id"].as_str()? == id).then_some(())
            })
            .count()
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
