//! Publishing task events to containerd, in the order they happen.
//!
//! Callers hold no await point while publishing: `send` encodes the event
//! into an envelope at once (so its timestamp is when it happened) and queues
//! it; one task forwards the queue to containerd's ttrpc event service.
//!
//! The queue also says how far containerd has got with it
//! ([`EventSink::flushed`]): Wait answers an exit only once containerd has
//! taken every event queued before it (`task_service/query.rs`).
//!
//! The forwarder is ours rather than containerd-shim's `RemotePublisher`
//! for two reasons. That publisher names each event through protobuf
//! reflection, which builds the descriptor pool of every proto the shim
//! links on the first event: about half a megabyte of heap in every shim,
//! paid 110 times on a full node. And it requeues a failed event behind the
//! ones that followed it, so a TaskExit could overtake its TaskStart while
//! containerd restarts. Here the head event is retried, in order, until
//! containerd takes it or `GIVE_UP_AFTER` passes.

use std::{
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant, SystemTime},
};

use containerd_shim_protos::topics;
use containerd_shim_protos::{
    protobuf::{well_known_types::any::Any, well_known_types::timestamp::Timestamp, Message},
    shim::{event::Envelope, events::ForwardRequest},
    shim_async::{Client, EventsClient},
    ttrpc::context::with_timeout,
};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::metrics;

/// Every task event lives in this protobuf package; containerd resolves an
/// event's type by `<package>.<message name>`.
const EVENT_PACKAGE: &str = "containerd.events";
/// How long one Forward may take before the connection is considered dead.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an event is retried while containerd is away (a restart takes
/// seconds; a containerd gone for longer reloads task state on its own).
const GIVE_UP_AFTER: Duration = Duration::from_secs(120);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub struct EventSink {
    tx: mpsc::UnboundedSender<Envelope>,
    namespace: String,
    progress: Arc<Progress>,
}

/// How far the queue has got: how many envelopes were queued, and how
/// many of them, in queue order, the forwarder is done with.
#[derive(Debug)]
struct Progress {
    /// Counted under this lock together with the send, so that the count
    /// and the queue's order agree.
    queued: Mutex<u64>,
    handled: watch::Sender<u64>,
    /// Every envelope counts as handled once queued (a recorder, or a sink
    /// that drops them): nobody forwards them.
    handled_when_queued: bool,
}

/// The forwarder's side of [`Progress`]: says how many envelopes, in queue
/// order, containerd took (or were given up).
#[derive(Debug)]
pub struct Handled(Arc<Progress>);

impl Handled {
    pub fn through(&self, n: u64) {
        self.0.handled.send_if_modified(|h| {
            let later = n > *h;
            *h = (*h).max(n);
            later
        });
    }
}

impl EventSink {
    /// Forward events to containerd's ttrpc socket at `address` (a path, as
    /// containerd passes it in `TTRPC_ADDRESS`).
    pub fn new(address: String, namespace: String) -> Self {
        let (sink, rx, handled) = Self::channel_held(namespace);
        tokio::spawn(forward_all(address, rx, handled));
        sink
    }

    /// A sink whose envelopes, in order, come out of the returned receiver,
    /// and count as handled once queued (a recorder in the task service's
    /// tests).
    pub fn channel(namespace: String) -> (Self, mpsc::UnboundedReceiver<Envelope>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Self::with(tx, namespace, true), rx)
    }

    /// The same, with the envelopes handled only as the returned
    /// [`Handled`] says (the forwarder's input).
    pub fn channel_held(namespace: String) -> (Self, mpsc::UnboundedReceiver<Envelope>, Handled) {
        let (tx, rx) = mpsc::unbounded_channel();
        let sink = Self::with(tx, namespace, false);
        let handled = Handled(sink.progress.clone());
        (sink, rx, handled)
    }

    fn with(
        tx: mpsc::UnboundedSender<Envelope>,
        namespace: String,
        handled_when_queued: bool,
    ) -> Self {
        let progress = Arc::new(Progress {
            queued: Mutex::new(0),
            handled: watch::channel(0).0,
            handled_when_queued,
        });
        EventSink {
            tx,
            namespace,
            progress,
        }
    }

    /// A sink that drops events, for tests without containerd.
    pub fn discard() -> Self {
        let (sink, mut rx) = Self::channel(String::new());
        tokio::spawn(async move { while rx.recv().await.is_some() {} });
        sink
    }

    pub fn send<E: Message>(&self, topic: &'static str, event: E) {
        let env = match envelope(topic, &self.namespace, &event) {
            Ok(env) => env,
            Err(e) => {
                warn!(topic, error = %e, "cannot encode event");
                return;
            }
        };
        let progress = &self.progress;
        let mut queued = progress
            .queued
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if self.tx.send(env).is_ok() {
            *queued += 1;
            if progress.handled_when_queued {
                progress.handled.send_replace(*queued);
            }
        }
    }

    /// Waits until every event queued so far is handled: taken by
    /// containerd, or given up after [`GIVE_UP_AFTER`]. False when `bound`
    /// passed first.
    pub async fn flushed(&self, bound: Duration) -> bool {
        let target = *self
            .progress
            .queued
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut handled = self.progress.handled.subscribe();
        let reached = tokio::time::timeout(bound, handled.wait_for(|&h| h >= target)).await;
        matches!(reached, Ok(Ok(_)))
    }
}

/// The type URL containerd registers for an event message.
pub fn type_url<E: Message>() -> String {
    format!("{EVENT_PACKAGE}.{}", E::NAME)
}

fn envelope<E: Message>(
    topic: &str,
    namespace: &str,
    event: &E,
) -> Result<Envelope, containerd_shim_protos::protobuf::Error> {
    let mut env = Envelope::new();
    env.timestamp = Some(timestamp(SystemTime::now())).into();
    env.namespace = namespace.to_string();
    env.topic = topic.to_string();
    env.event = Some(Any {
        type_url: type_url::<E>(),
        value: event.write_to_bytes()?,
        ..Default::default()
    })
    .into();
    Ok(env)
}

fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let mut ts = Timestamp::new();
    ts.seconds = d.as_secs() as i64;
    ts.nanos = d.subsec_nanos() as i32;
    ts
}

/// Forward queued envelopes one by one, reconnecting when containerd went
/// away, and keeping their order.
async fn forward_all(address: String, mut rx: mpsc::UnboundedReceiver<Envelope>, handled: Handled) {
    let sockaddr = format!("unix://{address}");
    let mut client: Option<EventsClient> = None;
    let mut taken = 0u64;
    while let Some(env) = rx.recv().await {
        let first_try = Instant::now();
        let mut backoff = Duration::from_millis(100);
        let mut failures = 0u32;
        let req = ForwardRequest {
            envelope: Some(env).into(),
            ..Default::default()
        };
        loop {
            // A connection made for an earlier event: containerd may have
            // restarted since, which this call is the first to find out.
            let mut reused = true;
            let c = match &client {
                Some(c) => c,
                None => match Client::connect(&sockaddr).await {
                    Ok(c) => {
                        reused = false;
                        client.insert(EventsClient::new(c))
                    }
                    Err(e) => {
                        debug!(address, error = %e, "cannot connect to containerd's event service");
                        failures += 1;
                        if !wait_retry(&req, first_try, &mut backoff, failures).await {
                            break;
                        }
                        continue;
                    }
                },
            };
            match c
                .forward(with_timeout(FORWARD_TIMEOUT.as_nanos() as i64), &req)
                .await
            {
                Ok(_) => {
                    if topic_of(&req) == topics::TASK_EXIT_EVENT_TOPIC {
                        metrics::inc(&metrics::FIGURES.exits_published);
                    }
                    if failures > 0 {
                        info!(
                            topic = topic_of(&req),
                            failures, "event delivered after retries"
                        );
                    }
                    break;
                }
                Err(e) => {
                    if failures == 0 {
                        warn!(topic = topic_of(&req), error = %e, "publishing an event failed; retrying");
                    } else {
                        debug!(topic = topic_of(&req), error = %e, "publishing an event failed again");
                    }
                    client = None;
                    failures += 1;
                    if retry_at_once(reused, failures) {
                        continue;
                    }
                    if !wait_retry(&req, first_try, &mut backoff, failures).await {
                        break;
                    }
                }
            }
        }
        taken += 1;
        handled.through(taken);
    }
}

/// A failed Forward on a connection made for an earlier event is first
/// tried again at once on a new one: containerd restarted since, and its
/// new socket takes the event now. A backoff there would hold every later
/// event (a TaskOOM, the TaskExit after it) for nothing.
fn retry_at_once(reused_connection: bool, failures: u32) -> bool {
    reused_connection && failures == 1
}

fn topic_of(req: &ForwardRequest) -> &str {
    req.envelope.as_ref().map_or("", |e| e.topic.as_str())
}

/// Sleep before the next attempt; false when the event is given up.
async fn wait_retry(
    req: &ForwardRequest,
    first_try: Instant,
    backoff: &mut Duration,
    failures: u32,
) -> bool {
    if first_try.elapsed() >= GIVE_UP_AFTER {
        warn!(
            topic = topic_of(req),
            failures, "containerd did not take the event for {GIVE_UP_AFTER:?}; dropped"
        );
        metrics::inc(&metrics::FIGURES.events_dropped);
        return false;
    }
    tokio::time::sleep(*backoff).await;
    *backoff = (*backoff * 2).min(MAX_BACKOFF);
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim_protos::events::task::{TaskExit, TaskOOM as TaskOom};

    fn exit_event(code: u32) -> TaskExit {
        TaskExit {
            container_id: "c1".into(),
            exit_status: code,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn flushed_waits_until_every_event_queued_before_is_handled() {
        let (sink, _rx, handled) = EventSink::channel_held("ns".into());
        assert!(sink.flushed(Duration::ZERO).await, "nothing queued");
        sink.send(topics::TASK_OOM_EVENT_TOPIC, TaskOom::default());
        sink.send(topics::TASK_EXIT_EVENT_TOPIC, exit_event(137));
        assert!(!sink.flushed(Duration::from_millis(20)).await);
        handled.through(1);
        assert!(
            !sink.flushed(Duration::from_millis(20)).await,
            "only the first is handled"
        );
        let waiter = {
            let sink = sink.clone();
            tokio::spawn(async move { sink.flushed(Duration::from_secs(10)).await })
        };
        tokio::task::yield_now().await;
        handled.through(2);
        assert!(waiter.await.unwrap());
        // Later events do not hold back a waiter that came before them.
        sink.send(topics::TASK_EXIT_EVENT_TOPIC, exit_event(1));
        handled.through(1);
        assert!(!sink.flushed(Duration::from_millis(20)).await);
    }

    #[tokio::test]
    async fn a_recorders_events_are_handled_once_queued() {
        let (sink, _rx) = EventSink::channel("ns".into());
        sink.send(topics::TASK_EXIT_EVENT_TOPIC, exit_event(3));
        assert!(sink.flushed(Duration::ZERO).await);
    }

    #[test]
    fn only_the_first_failure_on_an_old_connection_is_retried_at_once() {
        assert!(retry_at_once(true, 1));
        assert!(
            !retry_at_once(false, 1),
            "a new connection failed: back off"
        );
        assert!(!retry_at_once(true, 2));
    }

    /// containerd's event service, as far as the forwarder sees it.
    struct FakeContainerd(std::sync::Mutex<Vec<u32>>);

    #[async_trait::async_trait]
    impl containerd_shim_protos::shim_async::Events for FakeContainerd {
        async fn forward(
            &self,
            _ctx: &containerd_shim_protos::ttrpc::r#async::TtrpcContext,
            req: ForwardRequest,
        ) -> containerd_shim_protos::ttrpc::Result<containerd_shim_protos::api::Empty> {
            let any = req.envelope.event.as_ref().unwrap();
            let e = TaskExit::parse_from_bytes(&any.value).unwrap();
            self.0.lock().unwrap().push(e.exit_status);
            Ok(Default::default())
        }
    }

    fn serve_events(
        path: &std::path::Path,
        fake: Arc<FakeContainerd>,
    ) -> containerd_shim_protos::ttrpc::r#async::Server {
        containerd_shim_protos::ttrpc::r#async::Server::new()
            .bind(&format!("unix://{}", path.display()))
            .unwrap()
            .register_service(containerd_shim_protos::shim_async::create_events(fake))
    }

    /// containerd restarted between two events: the second reaches the new
    /// containerd, and the events are taken in order.
    #[tokio::test]
    async fn events_reach_a_restarted_containerd_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ttrpc.sock");
        let first = Arc::new(FakeContainerd(Default::default()));
        let mut server = serve_events(&path, first.clone());
        server.start().await.unwrap();
        let sink = EventSink::new(path.display().to_string(), "ns".into());
        sink.send(topics::TASK_EXIT_EVENT_TOPIC, exit_event(1));
        assert!(sink.flushed(Duration::from_secs(10)).await);
        assert_eq!(*first.0.lock().unwrap(), vec![1]);

        server.shutdown().await.unwrap();
        drop(server);
        let _ = std::fs::remove_file(&path);
        let second = Arc::new(FakeContainerd(Default::default()));
        let mut server = serve_events(&path, second.clone());
        server.start().await.unwrap();
        sink.send(topics::TASK_EXIT_EVENT_TOPIC, exit_event(2));
        sink.send(topics::TASK_EXIT_EVENT_TOPIC, exit_event(3));
        assert!(sink.flushed(Duration::from_secs(10)).await);
        assert_eq!(*second.0.lock().unwrap(), vec![2, 3]);
        server.shutdown().await.unwrap();
    }

    #[test]
    fn type_url_is_the_registered_name() {
        assert_eq!(type_url::<TaskExit>(), "containerd.events.TaskExit");
    }

    #[test]
    fn type_urls_match_the_protobuf_full_names() {
        use containerd_shim_protos::events::task::*;
        use containerd_shim_protos::protobuf::MessageFull;
        assert_eq!(
            type_url::<TaskCreate>(),
            TaskCreate::descriptor().full_name()
        );
        assert_eq!(type_url::<TaskStart>(), TaskStart::descriptor().full_name());
        assert_eq!(
            type_url::<TaskDelete>(),
            TaskDelete::descriptor().full_name()
        );
        assert_eq!(type_url::<TaskOOM>(), TaskOOM::descriptor().full_name());
        assert_eq!(
            type_url::<TaskExecAdded>(),
            TaskExecAdded::descriptor().full_name()
        );
        assert_eq!(
            type_url::<TaskExecStarted>(),
            TaskExecStarted::descriptor().full_name()
        );
        assert_eq!(
            type_url::<TaskPaused>(),
            TaskPaused::descriptor().full_name()
        );
        assert_eq!(
            type_url::<TaskResumed>(),
            TaskResumed::descriptor().full_name()
        );
        assert_eq!(type_url::<TaskIO>(), TaskIO::descriptor().full_name());
    }

    #[test]
    fn envelope_carries_topic_namespace_and_payload() {
        let ev = TaskExit {
            container_id: "c1".into(),
            exit_status: 3,
            ..Default::default()
        };
        let env = envelope("/tasks/exit", "k8s.io", &ev).unwrap();
        assert_eq!(env.topic, "/tasks/exit");
        assert_eq!(env.namespace, "k8s.io");
        let any = env.event.as_ref().unwrap();
        assert_eq!(any.type_url, "containerd.events.TaskExit");
        let back = TaskExit::parse_from_bytes(&any.value).unwrap();
        assert_eq!(back.exit_status, 3);
        assert!(env.timestamp.as_ref().unwrap().seconds > 0);
    }
}
