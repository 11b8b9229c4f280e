//! The edge publisher (issue 32): keeps the CloudFront KeyValueStore the
//! edge function reads in step with the sales. Each pass reads the live
//! products (DynamoDB decides the controls and times), their shelves
//! (Redis: every bucket dry, two passes running, is sold out) and writes
//! what changed with `If-Match` (one UpdateKeys per 50 keys). A product
//! that left the live list loses its key (the origin then answers it 404).
//!
//! No rollback, even with two writers (a retried invocation beside a late
//! one) or a lost reply: each pass reads the store's version before the
//! sales, and every write carries it, so a write from older reads than the
//! last one written is refused (stale) and the pass starts over from fresh
//! reads. A value from an older control never replaces a newer one
//! ([`EdgeValue::replaces`]). The store's values are read again only when
//! its version is not the one this publisher last saw, so an unchanged
//! sale costs one DescribeKeyValueStore a pass and no write, and a value
//! written by anyone else is corrected on the next pass.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use shared::domain::ProductId;
use shared::edge::{Change, Dryness, EdgeStore, EdgeValue, Written};
use shared::live::KEEP_AFTER_END_MS;
use shared::ports::{Catalogue, Clock, PortResult, SaleGate};

/// Keys per UpdateKeys call (the API's limit).
const CHANGES_PER_CALL: usize = 50;
/// Fresh starts within one publish when another writer got in between.
const ATTEMPTS: usize = 3;

pub struct Publisher<G, S, E> {
    pub gate: G,
    pub store: S,
    pub edge: E,
    pub clock: Arc<dyn Clock>,
    memory: Mutex<Memory>,
}

#[derive(Default)]
struct Memory {
    /// The store's version and values as this publisher last read or wrote
    /// them; None: read them again.
    known: Option<(String, HashMap<String, String>)>,
    dryness: HashMap<ProductId, Dryness>,
    /// When a pass first found the edge behind the sales (ms): the lag.
    behind_since: Option<i64>,
}

/// What one publish did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Published {
    pub products: usize,
    pub written: usize,
    /// Passes that found the store moved on and started over.
    pub stale: usize,
}

impl<G: SaleGate, S: Catalogue, E: EdgeStore> Publisher<G, S, E> {
    pub fn new(gate: G, store: S, edge: E, clock: Arc<dyn Clock>) -> Self {
        Self {
            gate,
            store,
            edge,
            clock,
            memory: Mutex::default(),
        }
    }

    fn memory(&self) -> std::sync::MutexGuard<'_, Memory> {
        self.memory.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One publish: a pass, started over (from fresh reads) while another
    /// writer moved the store, up to a few times.
    pub async fn publish(&self) -> PortResult<Published> {
        let mut report = Published::default();
        for attempt in 0..ATTEMPTS {
            match self.pass(attempt == 0).await {
                Ok(Some((products, written))) => {
                    report.products = products;
                    report.written = written;
                    metrics::counter!("flashsale_edge_passes_total").increment(1);
                    return Ok(report);
                }
                Ok(None) => {
                    report.stale += 1;
                    metrics::counter!("flashsale_edge_stale_writes_total").increment(1);
                }
                Err(e) => {
                    self.memory().known = None;
                    return Err(e);
                }
            }
        }
        tracing::warn!(
            attempts = ATTEMPTS,
            "the edge store kept moving under this publisher: is a second one writing? Next pass retries"
        );
        Ok(report)
    }

    /// (products, keys written), or None when the store moved on since the
    /// version this pass read. Only a publish's first pass counts toward a
    /// sell-out ([`Dryness::recheck`]).
    async fn pass(&self, first: bool) -> PortResult<Option<(usize, usize)>> {
        // The store first, the sales after: see the module's comment.
        let version = self.edge.version().await?;
        let known = self.memory().known.take();
        let mut stored = match known {
            Some((v, values)) if v == version => values,
            _ => self.edge.entries().await?.into_iter().collect(),
        };
        let now = self.clock.now_ms();
        let ids = self.store.live_products(now - KEEP_AFTER_END_MS).await?;
        let mut changes = Vec::new();
        for id in &ids {
            let Some(product) = self.store.product(id).await? else {
                continue;
            };
            // A shelf that cannot be read is not dry: the edge lets buyers
            // through to the origin, which decides.
            let left = match self.gate.stats(id).await {
                Ok(stats) => stats.map(|s| s.stock_left),
                Err(e) => {
                    tracing::warn!(product = %id, error = %e, "shelf unreadable; not sold out at the edge");
                    None
                }
            };
            let dry = {
                let mut memory = self.memory();
                let d = memory.dryness.entry(id.clone()).or_default();
                *d = if first {
                    d.observe(left)
                } else {
                    d.recheck(left)
                };
                *d
            };
            let value = EdgeValue::of(&product, now, dry.sold_out());
            if value.replaces(stored.get(id.as_str()).map(String::as_str)) {
                changes.push(Change::Put {
                    key: id.as_str().to_owned(),
                    value: value.encode(),
                });
            }
        }
        // Ours (values this code can read) but no longer live.
        let live: std::collections::HashSet<&str> = ids.iter().map(ProductId::as_str).collect();
        changes.extend(
            stored
                .iter()
                .filter(|(k, v)| !live.contains(k.as_str()) && EdgeValue::parse(v).is_some())
                .map(|(k, _)| Change::Delete { key: k.clone() }),
        );
        self.memory().dryness.retain(|id, _| ids.contains(id));
        if changes.is_empty() {
            let mut memory = self.memory();
            memory.known = Some((version, stored));
            memory.behind_since = None;
            return Ok(Some((ids.len(), 0)));
        }
        let behind_since = *self.memory().behind_since.get_or_insert(now);
        let mut version = version;
        for chunk in changes.chunks(CHANGES_PER_CALL) {
            match self.edge.write(chunk, &version).await? {
                Written::At(next) => {
                    version = next;
                    for c in chunk {
                        match c {
                            Change::Put { key, value } => {
                                tracing::info!(product = %key, value = %value, "published to the edge");
                                stored.insert(key.clone(), value.clone());
                            }
                            Change::Delete { key } => {
                                tracing::info!(product = %key, "no longer live: removed from the edge");
                                stored.remove(key);
                            }
                        }
                    }
                }
                Written::Stale => return Ok(None),
            }
        }
        let lag = self.clock.now_ms() - behind_since;
        metrics::histogram!("flashsale_edge_lag_ms").record(lag as f64);
        let mut memory = self.memory();
        memory.known = Some((version, stored));
        memory.behind_since = None;
        Ok(Some((ids.len(), changes.len())))
    }
}
