//! The shim's own figures: counters and fixed-bucket histograms kept in
//! plain atomics, for `brisk-ctl exporter` to read (`metrics_socket`).
//!
//! One shim serves one pod, so the figures are the process's: statics, with
//! no allocation, lock or thread on the paths that note them. Label values
//! are fixed lists known at compile time (Task API methods, runc commands);
//! anything else is counted as "other", so a label never grows the shim.

use std::{
    cell::Cell,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use serde::{Deserialize, Serialize};

/// Upper bounds (seconds) of the duration buckets. Up to 5 minutes: a slow
/// unmount or a stuck runc is what these figures are for, and Prometheus
/// histograms that top out at 10 s hide exactly that.
pub const BUCKETS: [f64; 16] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// The Task API methods, as `task_service/ttrpc.rs` names them.
pub const METHODS: [&str; 18] = [
    "create",
    "start",
    "delete",
    "state",
    "pids",
    "pause",
    "resume",
    "checkpoint",
    "kill",
    "exec",
    "resize_pty",
    "close_io",
    "update",
    "wait",
    "stats",
    "connect",
    "shutdown",
    "other",
];

/// The runc commands the runc wrapper runs.
pub const RUNC_COMMANDS: [&str; 13] = [
    "create", "start", "delete", "kill", "state", "update", "exec", "pause", "resume", "ps",
    "features", "events", "other",
];

/// A histogram of durations with the fixed [`BUCKETS`]; the last count is
/// the +Inf bucket. Counts are per bucket, not cumulative.
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

impl Histogram {
    pub const fn new() -> Self {
        Histogram {
            counts: [const { AtomicU64::new(0) }; BUCKETS.len() + 1],
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let counts: Vec<u64> = self
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        HistogramSnapshot {
            count: counts.iter().sum(),
            counts,
            sum_seconds: self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

/// What a histogram held when it was read.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HistogramSnapshot {
    /// One count per bucket of [`BUCKETS`], then the +Inf bucket.
    pub counts: Vec<u64>,
    pub count: u64,
    pub sum_seconds: f64,
}

/// A histogram per label value of a fixed list (the last value is "other").
pub struct HistogramFamily<const N: usize> {
    names: &'static [&'static str; N],
    hists: [Histogram; N],
}

impl<const N: usize> HistogramFamily<N> {
    pub const fn new(names: &'static [&'static str; N]) -> Self {
        HistogramFamily {
            names,
            hists: [const { Histogram::new() }; N],
        }
    }

    pub fn observe(&self, name: &str, d: Duration) {
        self.hists[index_of(self.names, name)].observe(d);
    }

    /// The label values that saw anything, with their histograms.
    pub fn snapshot(&self) -> Vec<(String, HistogramSnapshot)> {
        self.names
            .iter()
            .zip(&self.hists)
            .map(|(n, h)| (n.to_string(), h.snapshot()))
            .filter(|(_, h)| h.count > 0)
            .collect()
    }
}

/// A counter per label value of a fixed list (the last value is "other").
pub struct CounterFamily<const N: usize> {
    names: &'static [&'static str; N],
    counts: [AtomicU64; N],
}

impl<const N: usize> CounterFamily<N> {
    pub const fn new(names: &'static [&'static str; N]) -> Self {
        CounterFamily {
            names,
            counts: [const { AtomicU64::new(0) }; N],
        }
    }

    pub fn inc(&self, name: &str) {
        self.counts[index_of(self.names, name)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Vec<(String, u64)> {
        self.names
            .iter()
            .zip(&self.counts)
            .map(|(n, c)| (n.to_string(), c.load(Ordering::Relaxed)))
            .filter(|(_, c)| *c > 0)
            .collect()
    }
}

fn index_of<const N: usize>(names: &[&str; N], name: &str) -> usize {
    names.iter().position(|n| *n == name).unwrap_or(N - 1)
}

/// The figures of this shim.
pub struct Figures {
    pub task_requests: HistogramFamily<{ METHODS.len() }>,
    pub runc_calls: HistogramFamily<{ RUNC_COMMANDS.len() }>,
    pub runc_timeouts: CounterFamily<{ RUNC_COMMANDS.len() }>,
    pub rootfs_unmounts: Histogram,
    pub rootfs_unmount_failures: AtomicU64,
    pub mounts_volatile: AtomicU64,
    pub mounts_plain: AtomicU64,
    pub answered_while_exiting: CounterFamily<{ METHODS.len() }>,
    pub exits_published: AtomicU64,
    pub oom_events: AtomicU64,
    pub events_dropped: AtomicU64,
    pub log_lines_dropped: AtomicU64,
}

/// The process's figures.
pub static FIGURES: Figures = Figures {
    task_requests: HistogramFamily::new(&METHODS),
    runc_calls: HistogramFamily::new(&RUNC_COMMANDS),
    runc_timeouts: CounterFamily::new(&RUNC_COMMANDS),
    rootfs_unmounts: Histogram::new(),
    rootfs_unmount_failures: AtomicU64::new(0),
    mounts_volatile: AtomicU64::new(0),
    mounts_plain: AtomicU64::new(0),
    answered_while_exiting: CounterFamily::new(&METHODS),
    exits_published: AtomicU64::new(0),
    oom_events: AtomicU64::new(0),
    events_dropped: AtomicU64::new(0),
    log_lines_dropped: AtomicU64::new(0),
};

/// Adds one to a plain counter of [`FIGURES`].
pub fn inc(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Notes a runc call; installed as the runc wrapper's observer.
pub fn runc_call(command: &str, took: Duration, timed_out: bool) {
    FIGURES.runc_calls.observe(command, took);
    if timed_out {
        FIGURES.runc_timeouts.inc(command);
    }
}

tokio::task_local! {
    /// Set while a Task API request runs: whether its answer came from the
    /// exiting state (no runc, no wait for the process).
    static FROM_EXITING: Cell<bool>;
}

/// Runs one Task API request `method`, noting its duration and whether it
/// was answered from the exiting state (by [`answered_from_exiting`] or
/// by failing with `exiting`, which `is_exiting` tells).
pub async fn task_request<T, E>(
    method: &'static str,
    request: impl std::future::Future<Output = Result<T, E>>,
    is_exiting: impl FnOnce(&E) -> bool,
) -> Result<T, E> {
    let started = std::time::Instant::now();
    let (answer, marked) = FROM_EXITING
        .scope(Cell::new(false), async {
            let answer = request.await;
            (answer, FROM_EXITING.with(Cell::get))
        })
        .await;
    FIGURES.task_requests.observe(method, started.elapsed());
    if marked || answer.as_ref().err().is_some_and(is_exiting) {
        FIGURES.answered_while_exiting.inc(method);
    }
    answer
}

/// The request being served is answered from its container's exiting state
/// (a State of an exited, not yet published process, a Pids of an exited
/// init). Outside a request, a no-op.
pub fn answered_from_exiting() {
    let _ = FROM_EXITING.try_with(|m| m.set(true));
}

/// Everything the shim tells the exporter, one JSON document.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The shim's pid, for its RSS in /proc.
    pub pid: u32,
    pub namespace: String,
    /// The id the shim was started for (the pod's sandbox, or the
    /// container's for a shim of its own).
    pub id: String,
    /// Upper bounds of every histogram's buckets.
    pub buckets: Vec<f64>,
    pub task_requests: Vec<(String, HistogramSnapshot)>,
    pub runc_calls: Vec<(String, HistogramSnapshot)>,
    pub runc_timeouts: Vec<(String, u64)>,
    pub rootfs_unmounts: HistogramSnapshot,
    pub rootfs_unmount_failures: u64,
    pub mounts_volatile: u64,
    pub mounts_plain: u64,
    pub answered_while_exiting: Vec<(String, u64)>,
    pub exits_published: u64,
    pub oom_events: u64,
    pub events_dropped: u64,
    pub log_lines_dropped: u64,
}

impl Figures {
    pub fn snapshot(&self, namespace: &str, id: &str) -> Snapshot {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Snapshot {
            pid: std::process::id(),
            namespace: namespace.to_string(),
            id: id.to_string(),
            buckets: BUCKETS.to_vec(),
            task_requests: self.task_requests.snapshot(),
            runc_calls: self.runc_calls.snapshot(),
            runc_timeouts: self.runc_timeouts.snapshot(),
            rootfs_unmounts: self.rootfs_unmounts.snapshot(),
            rootfs_unmount_failures: load(&self.rootfs_unmount_failures),
            mounts_volatile: load(&self.mounts_volatile),
            mounts_plain: load(&self.mounts_plain),
            answered_while_exiting: self.answered_while_exiting.snapshot(),
            exits_published: load(&self.exits_published),
            oom_events: load(&self.oom_events),
            events_dropped: load(&self.events_dropped),
            log_lines_dropped: load(&self.log_lines_dropped),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_land_in_their_bucket_and_sum() {
        let h = Histogram::new();
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(4));
        h.observe(Duration::from_secs(1000));
        let s = h.snapshot();
        assert_eq!(s.count, 3);
        assert_eq!(s.counts.len(), BUCKETS.len() + 1);
        assert_eq!(s.counts[1], 1, "3 ms is in the 5 ms bucket");
        assert_eq!(s.counts[10], 1, "4 s is in the 5 s bucket");
        assert_eq!(s.counts[BUCKETS.len()], 1, "1000 s is in +Inf");
        assert!((s.sum_seconds - 1004.003).abs() < 1e-6, "{}", s.sum_seconds);
    }

    #[test]
    fn unknown_label_values_count_as_other() {
        let f = CounterFamily::new(&RUNC_COMMANDS);
        f.inc("checkpoint-of-something-new");
        f.inc("kill");
        assert_eq!(
            f.snapshot(),
            vec![("kill".to_string(), 1), ("other".to_string(), 1)]
        );
    }

    #[tokio::test]
    async fn a_request_answered_from_exiting_is_counted_by_method() {
        let before = FIGURES.answered_while_exiting.snapshot();
        let count =
            |s: &[(String, u64)], m: &str| s.iter().find(|(n, _)| n == m).map_or(0, |(_, c)| *c);
        let ok: Result<(), ()> = task_request(
            "pids",
            async {
                answered_from_exiting();
                Ok(())
            },
            |_| false,
        )
        .await;
        assert!(ok.is_ok());
        let err: Result<(), bool> = task_request("resume", async { Err(true) }, |e| *e).await;
        assert!(err.is_err());
        let plain: Result<(), ()> = task_request("pause", async { Ok(()) }, |_| true).await;
        assert!(plain.is_ok());
        let after = FIGURES.answered_while_exiting.snapshot();
        assert_eq!(count(&after, "pids"), count(&before, "pids") + 1);
        assert_eq!(count(&after, "resume"), count(&before, "resume") + 1);
        assert_eq!(count(&after, "pause"), count(&before, "pause"));
        // Outside a request it is a no-op, not a panic.
        answered_from_exiting();
    }
}
