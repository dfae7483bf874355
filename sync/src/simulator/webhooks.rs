//! The ServiceM8 simulator's object webhooks (PROVIDERS.md §1, "Webhooks"): form-encoded
//! subscriptions at `/webhook_subscriptions` (and `/webhook_subscriptions/object`), each checked
//! with the `mode=subscribe&challenge=…` handshake before it is kept; then every change to a
//! subscribed object is posted as `{"object", "entry": [{"uuid", "changed_fields", "time"}],
//! "resource_url"}`, changes made within a few milliseconds of each other in one callback.
//! Knobs drop, duplicate, reorder and delay callbacks, as a real network and provider may.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use rand::Rng;
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// How long changes gather before they are sent together.
const BATCH_WINDOW: Duration = Duration::from_millis(5);
/// ServiceM8 expects an answer within 10 s.
const CALLBACK_TIMEOUT: Duration = Duration::from_secs(10);
/// Records one callback names at most (a burst goes out as several callbacks).
const MAX_ENTRIES: usize = 100;

/// How callbacks misbehave, as probabilities from 0 to 1 (and a delay).
#[derive(Debug, Clone, Default)]
pub struct WebhookKnobs {
    /// A callback is never sent.
    pub drop: f64,
    /// A callback is sent twice.
    pub duplicate: f64,
    /// Callbacks gathered together are sent in reverse order, their entries reversed too.
    pub reorder: bool,
    /// Every callback waits this long before it is sent (sent late, beside newer ones).
    pub delay: Duration,
}

/// Counters tests read.
#[derive(Debug, Clone, Default)]
pub struct WebhookStats {
    pub subscriptions: usize,
    pub challenges: u64,
    pub sent: u64,
    pub dropped: u64,
    pub duplicated: u64,
    pub failed: u64,
}

/// One subscription: the object, its fields, where it posts.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Subscription {
    pub object: String,
    pub fields: String,
    pub callback_url: String,
    pub unique_id: String,
}

struct Change {
    object: &'static str,
    uuid: String,
    fields: Vec<String>,
    time: String,
}

/// The simulator's webhook state and its sender.
pub struct Hooks {
    inner: Mutex<Inner>,
    tx: mpsc::UnboundedSender<Change>,
    rx: Mutex<Option<mpsc::UnboundedReceiver<Change>>>,
    http: reqwest::Client,
}

struct Inner {
    /// By (object, unique id or callback URL): posting the same again updates it.
    subscriptions: BTreeMap<(String, String), Subscription>,
    knobs: WebhookKnobs,
    stats: WebhookStats,
}

impl Hooks {
    pub fn new(knobs: WebhookKnobs) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Self {
            inner: Mutex::new(Inner { subscriptions: BTreeMap::new(), knobs, stats: WebhookStats::default() }),
            tx,
            rx: Mutex::new(Some(rx)),
            http: reqwest::Client::builder()
                .timeout(CALLBACK_TIMEOUT)
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("static reqwest configuration"),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_knobs(&self, knobs: WebhookKnobs) {
        self.lock().knobs = knobs;
    }

    pub fn stats(&self) -> WebhookStats {
        let inner = self.lock();
        WebhookStats { subscriptions: inner.subscriptions.len(), ..inner.stats.clone() }
    }

    pub fn subscriptions(&self) -> Vec<Subscription> {
        self.lock().subscriptions.values().cloned().collect()
    }

    /// A record of `object` changed: queued for its subscribers, if it has any.
    pub fn changed(&self, object: &'static str, uuid: &str, fields: Vec<String>, time: &str) {
        if self.lock().subscriptions.keys().any(|(o, _)| o == object) {
            let _ = self.tx.send(Change { object, uuid: uuid.to_owned(), fields, time: time.to_owned() });
        }
    }

    /// Checks `callback` with the handshake and keeps the subscription if it answered.
    pub async fn subscribe(&self, sub: Subscription) -> Result<(), String> {
        let challenge = format!("sim-{:016x}", rand::random::<u64>());
        self.lock().stats.challenges += 1;
        let answer = self
            .http
            .post(&sub.callback_url)
            .form(&[("mode", "subscribe"), ("challenge", challenge.as_str())])
            .send()
            .await
            .map_err(|e| format!("the callback URL could not be reached: {}", e.without_url()))?;
        let status = answer.status();
        let body = answer.text().await.unwrap_or_default();
        if !status.is_success() || body.trim() != challenge {
            return Err(format!("the callback URL did not answer the challenge (HTTP {})", status.as_u16()));
        }
        let key = (
            sub.object.clone(),
            if sub.unique_id.is_empty() { sub.callback_url.clone() } else { sub.unique_id.clone() },
        );
        self.lock().subscriptions.insert(key, sub);
        Ok(())
    }

    /// Removes `object`'s subscriptions (to `callback_url` only, when given).
    pub fn unsubscribe(&self, object: &str, callback_url: Option<&str>) -> usize {
        let mut inner = self.lock();
        let before = inner.subscriptions.len();
        inner.subscriptions.retain(|(o, _), s| !(o == object && callback_url.is_none_or(|u| u == s.callback_url)));
        before - inner.subscriptions.len()
    }

    /// Sends queued changes until `shutdown`; `resource_base` is the API base for `resource_url`.
    pub async fn run(self: std::sync::Arc<Self>, resource_base: String, shutdown: tokio_util::sync::CancellationToken) {
        let Some(mut rx) = self.rx.lock().unwrap_or_else(|e| e.into_inner()).take() else { return };
        loop {
            let first = tokio::select! {
                _ = shutdown.cancelled() => return,
                change = rx.recv() => match change { Some(c) => c, None => return },
            };
            tokio::time::sleep(BATCH_WINDOW).await;
            let mut batch = vec![first];
            while let Ok(more) = rx.try_recv() {
                batch.push(more);
            }
            let mut deliveries = self.deliveries(batch, &resource_base);
            let knobs = self.lock().knobs.clone();
            if knobs.reorder {
                deliveries.reverse();
            }
            for (url, mut payload) in deliveries {
                if knobs.reorder
                    && let Some(entries) = payload["entry"].as_array_mut()
                {
                    entries.reverse();
                }
                let (dropped, twice) = {
                    let mut rng = rand::rng();
                    (rng.random::<f64>() < knobs.drop, rng.random::<f64>() < knobs.duplicate)
                };
                if dropped {
                    self.lock().stats.dropped += 1;
                    continue;
                }
                let times = if twice { 2 } else { 1 };
                if twice {
                    self.lock().stats.duplicated += 1;
                }
                if knobs.delay.is_zero() {
                    for _ in 0..times {
                        self.post(&url, &payload).await;
                    }
                } else {
                    let (hooks, delay) = (self.clone(), knobs.delay);
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        for _ in 0..times {
                            hooks.post(&url, &payload).await;
                        }
                    });
                }
            }
        }
    }

    /// One callback per subscription and object, its records in the order they changed.
    fn deliveries(&self, batch: Vec<Change>, resource_base: &str) -> Vec<(String, Value)> {
        let mut by_object: BTreeMap<&'static str, Vec<Change>> = BTreeMap::new();
        for change in batch {
            by_object.entry(change.object).or_default().push(change);
        }
        let subscriptions: Vec<Subscription> = self.lock().subscriptions.values().cloned().collect();
        let mut out = Vec::new();
        for (object, changes) in by_object {
            for changes in changes.chunks(MAX_ENTRIES) {
                let entry: Vec<Value> = changes
                    .iter()
                    .map(|c| json!({"uuid": c.uuid, "changed_fields": c.fields, "time": c.time}))
                    .collect();
                let resource_url = match changes {
                    [one] => format!("{resource_base}/{object}/{}.json", one.uuid),
                    _ => format!("{resource_base}/{object}.json"),
                };
                for sub in subscriptions.iter().filter(|s| s.object == object) {
                    out.push((
                        sub.callback_url.clone(),
                        json!({"object": object, "entry": entry, "resource_url": resource_url}),
                    ));
                }
            }
        }
        out
    }

    async fn post(&self, url: &str, payload: &Value) {
        let ok = self.http.post(url).json(payload).send().await.is_ok_and(|r| r.status().is_success());
        let mut inner = self.lock();
        if ok {
            inner.stats.sent += 1;
        } else {
            inner.stats.failed += 1;
        }
    }
}
