//! `brisk-ctl exporter`: the node's brisk figures in Prometheus text format
//! on `/metrics`. Each scrape reads every brisk shim's snapshot (`shims`),
//! each within a short timeout and all at once, so a hung shim costs one
//! failure count and at most that timeout, and the shims are only asked
//! when Prometheus asks. The PLEG probe (`probe`) runs on its own.

mod ledger;
mod probe;
mod shims;

use std::{
    collections::BTreeMap, net::SocketAddr, path::PathBuf, sync::atomic::AtomicU64, time::Duration,
};

use brisk_shim::metrics::{HistogramSnapshot, Snapshot};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::{ConstGauge, Gauge},
        MetricType,
    },
    registry::Registry,
};

use crate::canary::CtlError;

/// The exporter's settings (the `exporter` subcommand's flags).
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    /// containerd's socket, for the CRI probe.
    pub address: PathBuf,
    /// containerd's state dir (`--state` of containerd).
    pub state: PathBuf,
    pub list_interval: Duration,
    pub shim_timeout: Duration,
}

/// Serves `/metrics` until the process is killed.
pub fn run(settings: Settings) -> Result<(), CtlError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| CtlError::Command(format!("exporter runtime: {e}")))?;
    let probe = probe::Probe::default();
    if !settings.list_interval.is_zero() {
        rt.spawn(
            probe
                .clone()
                .run(settings.address.clone(), settings.list_interval),
        );
    }
    let server = tiny_http::Server::http(settings.listen)
        .map_err(|e| CtlError::Command(format!("listen on {}: {e}", settings.listen)))?;
    eprintln!(
        "brisk-ctl exporter: serving http://{}/metrics (shims under {}, CRI at {})",
        settings.listen,
        settings.state.display(),
        settings.address.display()
    );
    let unreadable = Counter::default();
    let mut ledger = ledger::Ledger::default();
    for request in server.incoming_requests() {
        let path = request.url().split('?').next().unwrap_or_default();
        let response = if path == "/metrics" {
            let body = rt.block_on(scrape(&settings, &probe, &unreadable, &mut ledger));
            tiny_http::Response::from_string(body).with_header(
                "Content-Type: application/openmetrics-text; version=1.0.0; charset=utf-8"
                    .parse::<tiny_http::Header>()
                    .expect("a valid header"),
            )
        } else {
            tiny_http::Response::from_string("brisk exporter: see /metrics\n")
                .with_status_code(if path == "/" { 200 } else { 404 })
        };
        let _ = request.respond(response);
    }
    Ok(())
}

async fn scrape(
    settings: &Settings,
    probe: &probe::Probe,
    unreadable: &Counter,
    ledger: &mut ledger::Ledger,
) -> String {
    let (reads, took) = shims::read_all(&settings.state, settings.shim_timeout).await;
    for r in &reads {
        if let shims::Read1::Failed { socket, reason } = r {
            eprintln!("brisk-ctl exporter: shim {}: {reason}", socket.display());
            unreadable.inc();
        }
    }
    let mut node = ledger.node(reads);
    node.scrape_seconds = took.as_secs_f64();
    let mut registry = Registry::default();
    registry.register(
        "brisk_shim_unreadable",
        "Shim figures sockets that did not answer in time or answered garbage",
        unreadable.clone(),
    );
    registry.register(
        "brisk_cri_list_containers_duration_seconds",
        "Duration of the exporter's CRI ListContainers probe (what kubelet's PLEG relist costs)",
        probe.durations.clone(),
    );
    registry.register(
        "brisk_cri_list_containers_failures",
        "CRI ListContainers probes that failed or took over 300 s",
        probe.failures.clone(),
    );
    registry.register(
        "brisk_cri_list_containers_running_seconds",
        "How long the CRI ListContainers probe now running has run (0 when none runs)",
        ConstGauge::new(probe.running_for().as_secs_f64()),
    );
    if let Some((last, n)) = probe.last() {
        registry.register(
            "brisk_cri_list_containers_last_duration_seconds",
            "Duration of the last CRI ListContainers probe that ended",
            ConstGauge::new(last.as_secs_f64()),
        );
        registry.register(
            "brisk_cri_containers",
            "Containers the last CRI ListContainers probe listed",
            ConstGauge::new(n as i64),
        );
    }
    register_status_probe(&mut registry, &probe.status);
    registry.register_collector(Box::new(node));
    let mut body = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut body, &registry) {
        eprintln!("brisk-ctl exporter: encoding failed: {e}");
    }
    body
}

fn register_status_probe(registry: &mut Registry, status: &probe::StatusProbe) {
    registry.register(
        "brisk_cri_container_status_duration_seconds",
        "Duration of each CRI ContainerStatus of the status probe (every container the last list named)",
        status.durations.clone(),
    );
    registry.register(
        "brisk_cri_container_status_failures",
        "CRI ContainerStatus probes that failed or took over 300 s",
        status.failures.clone(),
    );
    registry.register(
        "brisk_cri_container_status_running_seconds",
        "How long the slowest CRI ContainerStatus still running has run (0 when none runs)",
        ConstGauge::new(status.running_for().as_secs_f64()),
    );
    if let Some(s) = status.slowest() {
        let slowest = Family::<Vec<(&'static str, String)>, Gauge<f64, AtomicU64>>::default();
        slowest
            .get_or_create(&vec![
                ("container_id", s.container_id),
                ("container", s.container),
                ("pod", s.pod),
                ("namespace", s.namespace),
            ])
            .set(s.took.as_secs_f64());
        registry.register(
            "brisk_cri_container_status_slowest_seconds",
            "The slowest CRI ContainerStatus of the last probe round, and whose it was",
            slowest,
        );
    }
}

/// The shims' figures, summed per node (and some per pod).
#[derive(Debug, Default, Clone)]
struct Node {
    shims: u64,
    unreadable_now: u64,
    scrape_seconds: f64,
    buckets: Vec<f64>,
    task_requests: BTreeMap<String, HistogramSnapshot>,
    runc_calls: BTreeMap<String, HistogramSnapshot>,
    runc_timeouts: BTreeMap<String, u64>,
    answered_while_exiting: BTreeMap<String, u64>,
    rootfs_unmounts: HistogramSnapshot,
    rootfs_unmount_failures: u64,
    mounts_volatile: u64,
    mounts_plain: u64,
    exits_published: u64,
    oom_events: u64,
    events_dropped: u64,
    log_lines_dropped: u64,
    /// Per pod: (namespace, id) -> (rss, unmount seconds, answered while exiting).
    pods: BTreeMap<(String, String), (u64, f64, u64)>,
}

fn add_hist(into: &mut HistogramSnapshot, h: &HistogramSnapshot) {
    if into.counts.len() < h.counts.len() {
        into.counts.resize(h.counts.len(), 0);
    }
    for (a, b) in into.counts.iter_mut().zip(&h.counts) {
        *a += b;
    }
    into.count += h.count;
    into.sum_seconds += h.sum_seconds;
}

impl Node {
    /// Counts `s` as a shim read in this scrape: its counters, and it in
    /// the per-pod figures.
    fn add(&mut self, s: Snapshot) {
        self.shims += 1;
        self.add_counts(&s);
        let exiting: u64 = s.answered_while_exiting.iter().map(|(_, n)| n).sum();
        let rss = shims::rss_bytes(s.pid).unwrap_or(0);
        let pod = self.pods.entry((s.namespace, s.id)).or_default();
        pod.0 += rss;
        pod.1 += s.rootfs_unmounts.sum_seconds;
        pod.2 += exiting;
    }

    /// Adds `s`'s counters and histograms to the node's.
    fn add_counts(&mut self, s: &Snapshot) {
        if self.buckets.is_empty() {
            self.buckets = s.buckets.clone();
        } else if self.buckets != s.buckets {
            // A shim of another brisk version with other buckets: its
            // histograms cannot be summed with these; its counters can.
            eprintln!(
                "brisk-ctl exporter: shim {} has other buckets; its histograms are left out",
                s.pid
            );
        }
        let same = self.buckets == s.buckets;
        if same {
            for (m, h) in &s.task_requests {
                add_hist(self.task_requests.entry(m.clone()).or_default(), h);
            }
            for (c, h) in &s.runc_calls {
                add_hist(self.runc_calls.entry(c.clone()).or_default(), h);
            }
            add_hist(&mut self.rootfs_unmounts, &s.rootfs_unmounts);
        }
        for (c, n) in &s.runc_timeouts {
            *self.runc_timeouts.entry(c.clone()).or_default() += n;
        }
        for (m, n) in &s.answered_while_exiting {
            *self.answered_while_exiting.entry(m.clone()).or_default() += n;
        }
        self.rootfs_unmount_failures += s.rootfs_unmount_failures;
        self.mounts_volatile += s.mounts_volatile;
        self.mounts_plain += s.mounts_plain;
        self.exits_published += s.exits_published;
        self.oom_events += s.oom_events;
        self.events_dropped += s.events_dropped;
        self.log_lines_dropped += s.log_lines_dropped;
    }

    /// `(upper bound, count)` pairs, per bucket, with +Inf as prometheus-client wants it.
    fn buckets_of(&self, h: &HistogramSnapshot) -> Vec<(f64, u64)> {
        let mut b: Vec<(f64, u64)> = self
            .buckets
            .iter()
            .copied()
            .zip(h.counts.iter().copied())
            .collect();
        b.push((
            f64::MAX,
            h.counts.get(self.buckets.len()).copied().unwrap_or(0),
        ));
        b
    }
}

fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: u64,
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    m.encode_counter::<prometheus_client::encoding::NoLabelSet, _, u64>(&v, None)
}

fn gauge(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: f64,
) -> Result<(), std::fmt::Error> {
    ConstGauge::new(v).encode(enc.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

fn labelled_counters(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    values: &BTreeMap<String, u64>,
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (l, v) in values {
        let labels = [(label, l.as_str())];
        m.encode_family(&labels)?
            .encode_counter::<prometheus_client::encoding::NoLabelSet, _, u64>(v, None)?;
    }
    Ok(())
}

impl Node {
    fn histograms(
        &self,
        enc: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        label: &str,
        values: &BTreeMap<String, HistogramSnapshot>,
    ) -> Result<(), std::fmt::Error> {
        let mut m = enc.encode_descriptor(name, help, None, MetricType::Histogram)?;
        for (l, h) in values {
            let labels = [(label, l.as_str())];
            m.encode_family(&labels)?
                .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                    h.sum_seconds,
                    h.count,
                    &self.buckets_of(h),
                    None,
                )?;
        }
        Ok(())
    }
}

impl Collector for Node {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let e = &mut enc;
        gauge(
            e,
            "brisk_shims",
            "brisk shims whose figures were read",
            self.shims as f64,
        )?;
        gauge(
            e,
            "brisk_shims_unreadable_now",
            "brisk shims whose figures could not be read in this scrape",
            self.unreadable_now as f64,
        )?;
        gauge(
            e,
            "brisk_shim_scrape_duration_seconds",
            "How long reading every shim's figures took in this scrape",
            self.scrape_seconds,
        )?;
        self.histograms(
            e,
            "brisk_task_request_duration_seconds",
            "Task API request duration by method",
            "method",
            &self.task_requests,
        )?;
        self.histograms(
            e,
            "brisk_runc_duration_seconds",
            "runc call duration by command",
            "command",
            &self.runc_calls,
        )?;
        labelled_counters(
            e,
            "brisk_runc_timeouts",
            "runc calls killed at their timeout, by command",
            "command",
            &self.runc_timeouts,
        )?;
        labelled_counters(
            e,
            "brisk_answered_while_exiting",
            "Task API calls answered from the exiting state (no runc), by method",
            "method",
            &self.answered_while_exiting,
        )?;
        {
            let mut m = e.encode_descriptor(
                "brisk_rootfs_unmount_duration_seconds",
                "Duration of the detached rootfs unmount of a deleted container",
                None,
                MetricType::Histogram,
            )?;
            m.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                self.rootfs_unmounts.sum_seconds,
                self.rootfs_unmounts.count,
                &self.buckets_of(&self.rootfs_unmounts),
                None,
            )?;
        }
        counter(
            e,
            "brisk_rootfs_unmount_failures",
            "rootfs unmounts that failed for good",
            self.rootfs_unmount_failures,
        )?;
        {
            let mut m = e.encode_descriptor(
                "brisk_rootfs_mounts",
                "rootfs mounts, by whether overlayfs was mounted volatile",
                None,
                MetricType::Counter,
            )?;
            for (v, n) in [("true", self.mounts_volatile), ("false", self.mounts_plain)] {
                m.encode_family(&[("volatile", v)])?
                    .encode_counter::<prometheus_client::encoding::NoLabelSet, _, u64>(&n, None)?;
            }
        }
        counter(
            e,
            "brisk_exits_published",
            "TaskExit events containerd took",
            self.exits_published,
        )?;
        counter(
            e,
            "brisk_oom_events",
            "TaskOOM events sent",
            self.oom_events,
        )?;
        counter(
            e,
            "brisk_events_dropped",
            "Events given up after containerd did not take them",
            self.events_dropped,
        )?;
        counter(
            e,
            "brisk_log_lines_dropped",
            "Shim log lines dropped because containerd did not read the log",
            self.log_lines_dropped,
        )?;
        {
            let mut m = e.encode_descriptor(
                "brisk_shim_rss_bytes",
                "Resident set of each pod's shim",
                None,
                MetricType::Gauge,
            )?;
            for ((ns, id), (rss, _, _)) in &self.pods {
                m.encode_family(&[("namespace", ns.as_str()), ("pod", id.as_str())])?
                    .encode_gauge(&(*rss as i64))?;
            }
        }
        {
            let mut m = e.encode_descriptor(
                "brisk_pod_rootfs_unmount_seconds",
                "Seconds the pod's shim spent in rootfs unmounts",
                None,
                MetricType::Counter,
            )?;
            for ((ns, id), (_, secs, _)) in &self.pods {
                m.encode_family(&[("namespace", ns.as_str()), ("pod", id.as_str())])?
                    .encode_counter::<prometheus_client::encoding::NoLabelSet, _, f64>(
                        secs, None,
                    )?;
            }
        }
        {
            let mut m = e.encode_descriptor(
                "brisk_pod_answered_while_exiting",
                "Task API calls the pod's shim answered from the exiting state",
                None,
                MetricType::Counter,
            )?;
            for ((ns, id), (_, _, n)) in &self.pods {
                m.encode_family(&[("namespace", ns.as_str()), ("pod", id.as_str())])?
                    .encode_counter::<prometheus_client::encoding::NoLabelSet, _, u64>(n, None)?;
            }
        }
        Ok(())
    }
}
