//! Relation batching: every relation and id lookup one nesting level asks for becomes one SQL
//! statement (`read::load_related`).
//!
//! async-graphql's `DataLoader` collects keys for a fixed delay on a timer thread; under load a
//! level's keys straddle the timer and split into several statements. This batcher relies on
//! how the executor works instead: a request's resolvers run in one task, and a level's sibling
//! resolvers are all polled before any is polled again. The first resolver to ask becomes the
//! batch's leader and yields until no sibling adds a key, then loads for everyone.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use clientapi_schema::read::{self, RelatedKey};
use tokio::sync::oneshot;

type Answer = Result<Arc<Vec<String>>, Arc<sqlx::Error>>;

/// One request's relation loader.
pub(crate) struct Batcher {
    reader: read::Reader,
    company: read::Scope,
    state: Mutex<Pending>,
}

#[derive(Default)]
struct Pending {
    waiting: Vec<(RelatedKey, oneshot::Sender<Answer>)>,
    led: bool,
}

impl Batcher {
    pub fn new(reader: read::Reader, company: read::Scope) -> Self {
        Self { reader, company, state: Mutex::default() }
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The records (as JSON text) for `key`, loaded together with every other key of its level.
    pub async fn load(&self, key: RelatedKey) -> Answer {
        let (tx, rx) = oneshot::channel();
        let lead = {
            let mut pending = self.pending();
            pending.waiting.push((key, tx));
            !std::mem::replace(&mut pending.led, true)
        };
        if lead {
            // Let the level's other resolvers ask: yield until a pass adds nothing.
            let mut seen = 0;
            loop {
                tokio::task::yield_now().await;
                let now = self.pending().waiting.len();
                if now == seen {
                    break;
                }
                seen = now;
            }
            let batch = {
                let mut pending = self.pending();
                pending.led = false;
                std::mem::take(&mut pending.waiting)
            };
            let keys: Vec<RelatedKey> = batch.iter().map(|(k, _)| k.clone()).collect();
            match read::load_related(&self.reader, self.company, &keys).await {
                Ok(mut found) => {
                    let mut answers: HashMap<RelatedKey, Arc<Vec<String>>> = HashMap::new();
                    for (key, tx) in batch {
                        let rows = answers
                            .entry(key.clone())
                            .or_insert_with(|| Arc::new(found.remove(&key).unwrap_or_default()))
                            .clone();
                        let _ = tx.send(Ok(rows));
                    }
                }
                Err(e) => {
                    let e = Arc::new(e);
                    for (_, tx) in batch {
                        let _ = tx.send(Err(e.clone()));
                    }
                }
            }
        }
        rx.await.unwrap_or_else(|_| Err(Arc::new(sqlx::Error::PoolClosed)))
    }
}
