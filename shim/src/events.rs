//! Publishing task events to containerd, in the order they happen.
//!
//! Callers hold no await point while publishing: `send` encodes the event
//! into an envelope at once (so its timestamp is when it happened) and queues
//! it; one task forwards the queue to containerd's ttrpc event service.
//!
//! The forwarder is ours rather than containerd-shim's `RemotePublisher`
//! for two reasons. That publisher names each event through protobuf
//! reflection, which builds the descriptor pool of every proto the shim
//! links on the first event: about half a megabyte of heap in every shim,
//! paid 110 times on a full node. And it requeues a failed event behind the
//! ones that followed it, so a TaskExit could overtake its TaskStart while
//! containerd restarts. Here the head event is retried, in order, until
//! containerd takes it or `GIVE_UP_AFTER` passes.

use std::time::{Duration, Instant, SystemTime};

use containerd_shim_protos::topics;
use containerd_shim_protos::{
    protobuf::{well_known_types::any::Any, well_known_types::timestamp::Timestamp, Message},
    shim::{event::Envelope, events::ForwardRequest},
    shim_async::{Client, EventsClient},
    ttrpc::context::with_timeout,
};
use tokio::sync::mpsc;
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
}

impl EventSink {
    /// Forward events to containerd's ttrpc socket at `address` (a path, as
    /// containerd passes it in `TTRPC_ADDRESS`).
    pub fn new(address: String, namespace: String) -> Self {
        let (sink, rx) = Self::channel(namespace);
        tokio::spawn(forward_all(address, rx));
        sink
    }

    /// A sink whose envelopes, in order, come out of the returned receiver
    /// (the forwarder's input; a recorder's in the task service's tests).
    pub fn channel(namespace: String) -> (Self, mpsc::UnboundedReceiver<Envelope>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (EventSink { tx, namespace }, rx)
    }

    /// A sink that drops events, for tests without containerd.
    pub fn discard() -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<Envelope>();
        tokio::spawn(async move { while rx.recv().await.is_some() {} });
        EventSink {
            tx,
            namespace: String::new(),
        }
    }

    pub fn send<E: Message>(&self, topic: &'static str, event: E) {
        match envelope(topic, &self.namespace, &event) {
            Ok(env) => {
                let _ = self.tx.send(env);
            }
            Err(e) => warn!(topic, error = %e, "cannot encode event"),
        }
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
async fn forward_all(address: String, mut rx: mpsc::UnboundedReceiver<Envelope>) {
    let sockaddr = format!("unix://{address}");
    let mut client: Option<EventsClient> = None;
    while let Some(env) = rx.recv().await {
        let first_try = Instant::now();
        let mut backoff = Duration::from_millis(100);
        let mut failures = 0u32;
        let req = ForwardRequest {
            envelope: Some(env).into(),
            ..Default::default()
        };
        loop {
            let c = match &client {
                Some(c) => c,
                None => match Client::connect(&sockaddr).await {
                    Ok(c) => client.insert(EventsClient::new(c)),
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
                    if !wait_retry(&req, first_try, &mut backoff, failures).await {
                        break;
                    }
                }
            }
        }
    }
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
    use containerd_shim_protos::events::task::TaskExit;

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
