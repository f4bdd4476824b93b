//! Publishing task events to containerd, in the order they happen.
//!
//! Callers hold no await point while publishing: events go into a queue that
//! one task forwards to containerd's ttrpc event service.

use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim_protos::{protobuf::MessageDyn, ttrpc::context::Context};
use tokio::sync::mpsc;
use tracing::warn;

#[derive(Clone)]
pub struct EventSink {
    tx: mpsc::UnboundedSender<(&'static str, Box<dyn MessageDyn>)>,
}

impl EventSink {
    pub fn new(publisher: RemotePublisher, namespace: String) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<(&'static str, Box<dyn MessageDyn>)>();
        tokio::spawn(async move {
            while let Some((topic, event)) = rx.recv().await {
                if let Err(e) = publisher
                    .publish(Context::default(), topic, &namespace, event)
                    .await
                {
                    warn!(topic, error = %e, "failed to publish event");
                }
            }
        });
        EventSink { tx }
    }

    /// A sink that drops events, for tests without containerd.
    pub fn discard() -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<(&'static str, Box<dyn MessageDyn>)>();
        tokio::spawn(async move { while rx.recv().await.is_some() {} });
        EventSink { tx }
    }

    pub fn send(&self, topic: &'static str, event: impl MessageDyn) {
        let _ = self.tx.send((topic, Box::new(event)));
    }
}
