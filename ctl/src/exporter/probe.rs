//! The PLEG cost probe: CRI ListContainers, as kubelet's PLEG relist calls
//! it, every interval, timed. kubelet's own relist histogram tops out at
//! 10 s and kubelet only complains after 3 minutes; this one goes to 300 s
//! and shows a call still running, so an alert can fire long before.
//!
//! Beside it, on its own clock, it asks ContainerStatus of every container
//! the last list named, all at once, as kubelet does for the pods a relist
//! found changed. A status waits on the same per-container lock in CRI that
//! stalls the list, so while a list is stuck the status calls say whose lock
//! it is: the slowest one, still waiting or not, is exported with the
//! container's names. The status loop cannot wait for the list: the list
//! is what is stuck.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::{
    runtime_service_client::RuntimeServiceClient, Container, ContainerStatusRequest,
    ListContainersRequest,
};
use prometheus_client::metrics::{counter::Counter, histogram::Histogram};
use tonic::transport::{Channel, Endpoint, Uri};

/// Upper bounds (seconds) of the list duration buckets.
pub const BUCKETS: [f64; 16] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 180.0, 300.0,
];

/// What the probe measured; shared with the scrapes.
#[derive(Clone)]
pub struct Probe {
    pub durations: Histogram,
    pub failures: Counter,
    /// When the call now running began, if one runs.
    running_since: Arc<Mutex<Option<Instant>>>,
    /// The duration of the last call that ended, and the containers it listed.
    last: Arc<Mutex<Option<(Duration, usize)>>>,
    pub status: StatusProbe,
}

impl Default for Probe {
    fn default() -> Self {
        Probe {
            durations: Histogram::new(BUCKETS),
            failures: Counter::default(),
            running_since: Default::default(),
            last: Default::default(),
            status: StatusProbe::default(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The ContainerStatus half of the probe.
#[derive(Clone)]
pub struct StatusProbe {
    pub durations: Histogram,
    pub failures: Counter,
    /// The containers the last list that ended named.
    listed: Arc<Mutex<Vec<Container>>>,
    /// Status calls now waiting, by container id, since when.
    in_flight: Arc<Mutex<HashMap<String, (Instant, Slowest)>>>,
    /// The slowest status of the last round that ended.
    last_round: Arc<Mutex<Option<Slowest>>>,
}

/// The container whose status took (or takes) longest, with what CRI
/// listed about it to find it by.
#[derive(Debug, Clone, PartialEq)]
pub struct Slowest {
    pub took: Duration,
    /// The first 13 characters, as crictl shows ids.
    pub container_id: String,
    pub container: String,
    /// kubelet's pod labels; empty for containers not made by a kubelet.
    pub pod: String,
    pub namespace: String,
}

impl Slowest {
    fn of(c: &Container) -> Self {
        let label = |k: &str| c.labels.get(k).cloned().unwrap_or_default();
        Slowest {
            took: Duration::ZERO,
            container_id: c.id.chars().take(13).collect(),
            container: c
                .metadata
                .as_ref()
                .map(|m| m.name.clone())
                .unwrap_or_default(),
            pod: label("io.kubernetes.pod.name"),
            namespace: label("io.kubernetes.pod.namespace"),
        }
    }
}

impl Default for StatusProbe {
    fn default() -> Self {
        StatusProbe {
            durations: Histogram::new(BUCKETS),
            failures: Counter::default(),
            listed: Default::default(),
            in_flight: Default::default(),
            last_round: Default::default(),
        }
    }
}

impl StatusProbe {
    /// How long the oldest status call still waiting has waited (zero when
    /// none waits).
    pub fn running_for(&self) -> Duration {
        lock(&self.in_flight)
            .values()
            .map(|(t, _)| t.elapsed())
            .max()
            .unwrap_or_default()
    }

    /// The slowest of the last round and of the calls still waiting: a
    /// call stuck behind a held lock is named while it waits.
    pub fn slowest(&self) -> Option<Slowest> {
        let waiting = lock(&self.in_flight)
            .values()
            .map(|(t, s)| Slowest {
                took: t.elapsed(),
                ..s.clone()
            })
            .max_by_key(|s| s.took);
        let last = lock(&self.last_round).clone();
        match (waiting, last) {
            (Some(w), Some(l)) => Some(if w.took > l.took { w } else { l }),
            (w, l) => w.or(l),
        }
    }

    /// Every `interval`, the status of each container the last list named,
    /// all at once; a round ends when its slowest call does.
    async fn run(self, channel: Channel, interval: Duration, bound: Duration) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let containers = lock(&self.listed).clone();
            if !containers.is_empty() {
                self.round(&channel, containers, bound).await;
            }
        }
    }

    async fn round(&self, channel: &Channel, containers: Vec<Container>, bound: Duration) {
        let mut calls = tokio::task::JoinSet::new();
        for c in containers {
            let mut client = RuntimeServiceClient::new(channel.clone());
            let me = self.clone();
            calls.spawn(async move {
                let started = Instant::now();
                let who = Slowest::of(&c);
                lock(&me.in_flight).insert(c.id.clone(), (started, who.clone()));
                let request = ContainerStatusRequest {
                    container_id: c.id.clone(),
                    verbose: false,
                };
                let answer = tokio::time::timeout(bound, client.container_status(request)).await;
                lock(&me.in_flight).remove(&c.id);
                let took = started.elapsed();
                me.durations.observe(took.as_secs_f64());
                match answer {
                    Ok(Ok(_)) => {}
                    // Removed since the list: not asked again.
                    Ok(Err(e)) if e.code() == tonic::Code::NotFound => {
                        lock(&me.listed).retain(|l| l.id != c.id)
                    }
                    Ok(Err(_)) | Err(_) => {
                        me.failures.inc();
                    }
                }
                Slowest { took, ..who }
            });
        }
        let mut slowest: Option<Slowest> = None;
        while let Some(done) = calls.join_next().await {
            let Ok(s) = done else { continue };
            if slowest.as_ref().is_none_or(|m| s.took > m.took) {
                slowest = Some(s);
            }
        }
        *lock(&self.last_round) = slowest;
    }
}

impl Probe {
    /// How long the call now running has run (zero when none runs).
    pub fn running_for(&self) -> Duration {
        lock(&self.running_since).map_or(Duration::ZERO, |t| t.elapsed())
    }

    pub fn last(&self) -> Option<(Duration, usize)> {
        *lock(&self.last)
    }

    /// Lists the containers through the CRI socket `socket` every
    /// `interval`, one call at a time, each bounded by the last bucket.
    pub async fn run(self, socket: PathBuf, interval: Duration) {
        let channel = channel(socket);
        let bound = Duration::from_secs_f64(BUCKETS[BUCKETS.len() - 1]);
        tokio::spawn(self.status.clone().run(channel.clone(), interval, bound));
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let started = Instant::now();
            *lock(&self.running_since) = Some(started);
            let mut client = RuntimeServiceClient::new(channel.clone());
            let call = client.list_containers(ListContainersRequest::default());
            let answer = tokio::time::timeout(bound, call).await;
            let took = started.elapsed();
            *lock(&self.running_since) = None;
            self.durations.observe(took.as_secs_f64());
            match answer {
                Ok(Ok(r)) => {
                    let containers = r.into_inner().containers;
                    *lock(&self.last) = Some((took, containers.len()));
                    *lock(&self.status.listed) = containers;
                }
                Ok(Err(_)) | Err(_) => {
                    self.failures.inc();
                    *lock(&self.last) = Some((took, 0));
                }
            }
        }
    }
}

/// A lazily connected channel to containerd's CRI over its unix socket,
/// as `integration/src/cri.rs` makes one.
fn channel(socket: PathBuf) -> Channel {
    Endpoint::from_static("http://[::]:50051")
        .connect_timeout(Duration::from_secs(5))
        .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
            let path = socket.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_cri::v1::ContainerMetadata;

    fn listed(id: &str, name: &str) -> Container {
        Container {
            id: id.into(),
            metadata: Some(ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            labels: [
                ("io.kubernetes.pod.name", "job-1"),
                ("io.kubernetes.pod.namespace", "batch"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_container_is_named_as_crictl_and_kubelet_name_it() {
        let s = Slowest::of(&listed(&"a".repeat(64), "task"));
        assert_eq!(s.container_id, "a".repeat(13));
        assert_eq!(
            (s.container.as_str(), s.pod.as_str(), s.namespace.as_str()),
            ("task", "job-1", "batch")
        );
    }

    #[test]
    fn a_status_still_waiting_is_the_slowest_once_it_waited_longest() {
        let p = StatusProbe::default();
        assert_eq!(p.slowest(), None);
        assert_eq!(p.running_for(), Duration::ZERO);
        *lock(&p.last_round) = Some(Slowest {
            took: Duration::from_secs(2),
            ..Slowest::of(&listed("done", "done"))
        });
        let since = Instant::now()
            .checked_sub(Duration::from_secs(1))
            .expect("a second after boot");
        lock(&p.in_flight).insert(
            "stuck".into(),
            (since, Slowest::of(&listed("stuck", "stuck"))),
        );
        assert_eq!(p.slowest().map(|s| s.container), Some("done".into()));
        let since = since
            .checked_sub(Duration::from_secs(4))
            .expect("after boot");
        lock(&p.in_flight).insert(
            "stuck".into(),
            (since, Slowest::of(&listed("stuck", "stuck"))),
        );
        let s = p.slowest().expect("one");
        assert_eq!(s.container, "stuck");
        assert!(s.took >= Duration::from_secs(5), "{s:?}");
        assert!(p.running_for() >= Duration::from_secs(5));
    }
}
