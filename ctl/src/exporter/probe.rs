//! The PLEG cost probe: CRI ListContainers, as kubelet's PLEG relist calls
//! it, every interval, timed. kubelet's own relist histogram tops out at
//! 10 s and kubelet only complains after 3 minutes; this one goes to 300 s
//! and shows a call still running, so an alert can fire long before.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::{runtime_service_client::RuntimeServiceClient, ListContainersRequest};
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
}

impl Default for Probe {
    fn default() -> Self {
        Probe {
            durations: Histogram::new(BUCKETS),
            failures: Counter::default(),
            running_since: Default::default(),
            last: Default::default(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
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
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let bound = Duration::from_secs_f64(BUCKETS[BUCKETS.len() - 1]);
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
                Ok(Ok(r)) => *lock(&self.last) = Some((took, r.into_inner().containers.len())),
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
