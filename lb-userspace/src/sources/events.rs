//! Kubernetes Events (events.k8s.io/v1) for objects xlb cannot serve: the reconciler's
//! [`Notice`]s become Warning events on the object, where `kubectl describe` shows them,
//! published with kube-rs' [`Recorder`] (a repeat within its cache window becomes a
//! series count on one event instead of a new object).
//!
//! Never in the sync's way: the reconciler hands notices over a bounded queue without
//! waiting, and this task publishes them at its own pace. Rate limits, as the API server
//! expects of a per-node agent: the same notice at most once per [`REPEAT_AFTER`], and at
//! most one event per [`SPACING`] overall (a burst waits in the queue; the queue drops
//! what does not fit). A failed publish is logged and not retried: the next sync reports
//! the problem again.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::{
    Client,
    runtime::events::{Event, EventType, Recorder, Reporter},
};

use crate::reconcile::Notice;

/// How many notices may wait.
pub const QUEUE: usize = 256;
/// The same notice (object, reason, message) is published again only after this.
pub const REPEAT_AFTER: Duration = Duration::from_secs(300);
/// At most one event per this, overall.
pub const SPACING: Duration = Duration::from_millis(100);

/// Publishes the notices of `rx` as Events until the queue closes. `node` names the
/// reporting instance.
pub async fn run(client: Client, node: String, mut rx: tokio::sync::mpsc::Receiver<Notice>) {
    let recorder = Recorder::new(
        client,
        Reporter {
            controller: "xlb".into(),
            instance: Some(format!("xlb-{node}")),
        },
    );
    let mut last: HashMap<Notice, Instant> = HashMap::new();
    while let Some(notice) = rx.recv().await {
        let now = Instant::now();
        last.retain(|_, at| now.duration_since(*at) < REPEAT_AFTER);
        if last.contains_key(&notice) {
            continue;
        }
        last.insert(notice.clone(), now);
        let reference = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some(notice.kind.into()),
            namespace: Some(notice.namespace.clone()),
            name: Some(notice.name.clone()),
            uid: notice.uid.clone(),
            ..Default::default()
        };
        let event = Event {
            type_: EventType::Warning,
            reason: notice.reason.into(),
            // The Events API caps a note at 1 kB.
            note: Some(truncate(&notice.message, 1024)),
            action: "Translate".into(),
            secondary: None,
        };
        if let Err(e) = recorder.publish(&event, &reference).await {
            tracing::warn!(
                object = format!("{} {}/{}", notice.kind, notice.namespace, notice.name),
                error = %e,
                "could not publish an event"
            );
        }
        tokio::time::sleep(SPACING).await;
    }
}

/// `text`, cut to at most `max` bytes on a character boundary.
fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::truncate;

    #[test]
    fn notes_are_cut_on_a_character_boundary() {
        assert_eq!(truncate("abc", 10), "abc");
        assert_eq!(truncate("abcdef", 4), "abcd");
        // 'é' is two bytes: a cut inside it backs off.
        assert_eq!(truncate("aé", 2), "a");
    }
}
