//! Stats on cgroup v2: containerd's `io.containerd.cgroups.v2.Metrics`,
//! read from the unified directory's files with the units the stock shim
//! uses. containerd's CRI turns these into what kubelet shows: CPU as
//! `usage_usec` × 1000, the working set as `memory.current` minus
//! `inactive_file`, RSS as `anon`.

use std::{io, path::Path};

use containerd_shim_protos::{
    cgroups_v2::metrics::{CPUStat, IOEntry, IOStat, MemoryEvents, MemoryStat, Metrics, PidsStat},
    protobuf::{well_known_types::any::Any, Message, MessageField},
};

use super::read_flat_keyed;
use crate::error::{Result, ShimError};

/// containerd registers the type under its protobuf full name.
const METRICS_TYPE_URL: &str = "io.containerd.cgroups.v2.Metrics";

pub fn collect(dir: &Path) -> Result<Any> {
    let metrics = read(dir).map_err(|e| ShimError::io(format!("cgroup {}", dir.display()), e))?;
    Ok(Any {
        type_url: METRICS_TYPE_URL.to_string(),
        value: metrics
            .write_to_bytes()
            .map_err(|e| ShimError::Other(e.to_string()))?,
        ..Default::default()
    })
}

/// Every figure of `dir`. A controller that is not enabled there leaves
/// its part empty; the cgroup itself missing is an error.
pub fn read(dir: &Path) -> io::Result<Metrics> {
    if !dir.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "the cgroup is gone",
        ));
    }
    Ok(Metrics {
        cpu: MessageField::some(cpu(dir)),
        memory: MessageField::from_option(memory(dir)),
        memory_events: MessageField::from_option(memory_events(dir)),
        pids: MessageField::from_option(pids(dir)),
        io: MessageField::from_option(io_stat(dir)),
        ..Default::default()
    })
}

/// `cpu.stat` is always there (the CPU times need no controller).
fn cpu(dir: &Path) -> CPUStat {
    let mut s = CPUStat::default();
    let _ = read_flat_keyed(&dir.join("cpu.stat"), |k, v| match k {
        "usage_usec" => s.usage_usec = v,
        "user_usec" => s.user_usec = v,
        "system_usec" => s.system_usec = v,
        "nr_periods" => s.nr_periods = v,
        "nr_throttled" => s.nr_throttled = v,
        "throttled_usec" => s.throttled_usec = v,
        "nr_bursts" => s.nr_bursts = v,
        "burst_usec" => s.burst_usec = v,
        _ => {}
    });
    s
}

fn memory(dir: &Path) -> Option<MemoryStat> {
    let usage = read_u64(&dir.join("memory.current"))?;
    let mut s = MemoryStat {
        usage,
        usage_limit: read_limit(&dir.join("memory.max")),
        swap_usage: read_u64(&dir.join("memory.swap.current")).unwrap_or(0),
        swap_limit: read_limit(&dir.join("memory.swap.max")),
        max_usage: read_u64(&dir.join("memory.peak")).unwrap_or(0),
        swap_max_usage: read_u64(&dir.join("memory.swap.peak")).unwrap_or(0),
        ..Default::default()
    };
    let _ = read_flat_keyed(&dir.join("memory.stat"), |k, v| match k {
        "anon" => s.anon = v,
        "file" => s.file = v,
        "kernel_stack" => s.kernel_stack = v,
        "slab" => s.slab = v,
        "sock" => s.sock = v,
        "shmem" => s.shmem = v,
        "file_mapped" => s.file_mapped = v,
        "file_dirty" => s.file_dirty = v,
        "file_writeback" => s.file_writeback = v,
        "anon_thp" => s.anon_thp = v,
        "inactive_anon" => s.inactive_anon = v,
        "active_anon" => s.active_anon = v,
        "inactive_file" => s.inactive_file = v,
        "active_file" => s.active_file = v,
        "unevictable" => s.unevictable = v,
        "slab_reclaimable" => s.slab_reclaimable = v,
        "slab_unreclaimable" => s.slab_unreclaimable = v,
        "pgfault" => s.pgfault = v,
        "pgmajfault" => s.pgmajfault = v,
        // Split into _anon and _file since Linux 5.9; the sum is the old figure.
        "workingset_refault" | "workingset_refault_anon" | "workingset_refault_file" => {
            s.workingset_refault += v
        }
        "workingset_activate" | "workingset_activate_anon" | "workingset_activate_file" => {
            s.workingset_activate += v
        }
        "workingset_nodereclaim" => s.workingset_nodereclaim = v,
        "pgrefill" => s.pgrefill = v,
        "pgscan" => s.pgscan = v,
        "pgsteal" => s.pgsteal = v,
        "pgactivate" => s.pgactivate = v,
        "pgdeactivate" => s.pgdeactivate = v,
        "pglazyfree" => s.pglazyfree = v,
        "pglazyfreed" => s.pglazyfreed = v,
        "thp_fault_alloc" => s.thp_fault_alloc = v,
        "thp_collapse_alloc" => s.thp_collapse_alloc = v,
        _ => {}
    });
    Some(s)
}

fn memory_events(dir: &Path) -> Option<MemoryEvents> {
    let mut e = MemoryEvents::default();
    read_flat_keyed(&dir.join("memory.events"), |k, v| match k {
        "low" => e.low = v,
        "high" => e.high = v,
        "max" => e.max = v,
        "oom" => e.oom = v,
        "oom_kill" => e.oom_kill = v,
        "oom_group_kill" => e.oom_group_kill = v,
        _ => {}
    })
    .ok()?;
    Some(e)
}

fn pids(dir: &Path) -> Option<PidsStat> {
    Some(PidsStat {
        current: read_u64(&dir.join("pids.current"))?,
        limit: read_limit(&dir.join("pids.max")),
        ..Default::default()
    })
}

/// `io.stat`: `MAJ:MIN rbytes=N wbytes=N rios=N wios=N dbytes=N dios=N`.
fn io_stat(dir: &Path) -> Option<IOStat> {
    let text = std::fs::read_to_string(dir.join("io.stat")).ok()?;
    let usage = text
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let (major, minor) = words.next()?.split_once(':')?;
            let mut e = IOEntry {
                major: major.parse().ok()?,
                minor: minor.parse().ok()?,
                ..Default::default()
            };
            for w in words {
                let Some((k, v)) = w.split_once('=') else {
                    continue;
                };
                let v = v.parse().unwrap_or(0);
                match k {
                    "rbytes" => e.rbytes = v,
                    "wbytes" => e.wbytes = v,
                    "rios" => e.rios = v,
                    "wios" => e.wios = v,
                    _ => {}
                }
            }
            Some(e)
        })
        .collect();
    Some(IOStat {
        usage,
        ..Default::default()
    })
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// A limit file: a number, or `max` for none, which the stock shim reports
/// as the largest u64.
fn read_limit(path: &Path) -> u64 {
    match std::fs::read_to_string(path) {
        Ok(t) if t.trim() == "max" => u64::MAX,
        Ok(t) => t.trim().parse().unwrap_or(0),
        Err(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use containerd_shim_protos::protobuf::MessageFull;

    use super::*;

    fn cgroup(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, body) in files {
            std::fs::write(dir.path().join(name), body).unwrap();
        }
        dir
    }

    #[test]
    fn type_url_is_the_protobuf_full_name() {
        assert_eq!(METRICS_TYPE_URL, Metrics::descriptor().full_name());
    }

    #[test]
    fn reads_every_controller_in_its_units() {
        let dir = cgroup(&[
            (
                "cpu.stat",
                "usage_usec 2000123\nuser_usec 1900000\nsystem_usec 100123\nnr_periods 10\nnr_throttled 2\nthrottled_usec 5000\n",
            ),
            ("memory.current", "44040192\n"),
            ("memory.max", "max\n"),
            ("memory.swap.current", "0\n"),
            ("memory.swap.max", "0\n"),
            (
                "memory.stat",
                "anon 1048576\nfile 42991616\ninactive_file 41943040\nactive_file 1048576\npgfault 300\npgmajfault 1\nworkingset_refault_anon 2\nworkingset_refault_file 3\n",
            ),
            ("memory.events", "low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\noom_group_kill 0\n"),
            ("pids.current", "3\n"),
            ("pids.max", "max\n"),
            ("io.stat", "8:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n"),
        ]);
        let m = read(dir.path()).unwrap();
        let cpu = m.cpu.as_ref().unwrap();
        assert_eq!(cpu.usage_usec, 2_000_123);
        assert_eq!(cpu.system_usec, 100_123);
        assert_eq!(cpu.nr_throttled, 2);
        let mem = m.memory.as_ref().unwrap();
        assert_eq!(mem.usage, 44_040_192);
        assert_eq!(mem.usage_limit, u64::MAX);
        assert_eq!(mem.inactive_file, 41_943_040);
        assert_eq!(mem.anon, 1_048_576);
        assert_eq!(mem.workingset_refault, 5);
        // What CRI shows as the working set: usage - inactive_file.
        assert_eq!(mem.usage - mem.inactive_file, 2_097_152);
        assert_eq!(m.memory_events.as_ref().unwrap().oom_kill, 1);
        assert_eq!(m.pids.as_ref().unwrap().current, 3);
        assert_eq!(m.pids.as_ref().unwrap().limit, u64::MAX);
        let io = &m.io.as_ref().unwrap().usage[0];
        assert_eq!((io.major, io.minor, io.rbytes, io.wios), (8, 0, 4096, 2));
    }

    #[test]
    fn missing_controllers_leave_their_part_empty() {
        let dir = cgroup(&[("cpu.stat", "usage_usec 5\n")]);
        let m = read(dir.path()).unwrap();
        assert_eq!(m.cpu.as_ref().unwrap().usage_usec, 5);
        assert!(m.memory.is_none());
        assert!(m.pids.is_none());
    }

    #[test]
    fn a_removed_cgroup_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("gone");
        assert_eq!(read(&gone).unwrap_err().kind(), io::ErrorKind::NotFound);
    }
}
