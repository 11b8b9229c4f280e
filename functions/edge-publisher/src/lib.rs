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
//!
//! It is the waiting room's inlet controller too (issue 33): for a sale
//! with a room it writes the room's curve (`<id>#room`), stepping it with
//! [`Inlet::next`] every [`Inlet::STEP_MS`] from the value the store
//! holds (so a restart or a lost write never moves the frontier back), and
//! the signing keys the edge checks passes with (`#room-keys`). One writer
//! for the store: the room's writes are ordered with the sale's.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use shared::domain::ProductId;
use shared::edge::{Change, Dryness, EdgeStore, EdgeValue, Written};
use shared::live::KEEP_AFTER_END_MS;
use shared::ports::{AdmissionGate, Catalogue, Clock, PortResult, RoomGate, SaleGate};
use shared::room::{self, Curve, Health, Inlet, Key, RoomValue, WaitingRoom};

/// Keys per UpdateKeys call (the API's limit).
const CHANGES_PER_CALL: usize = 50;
/// Fresh starts within one publish when another writer got in between.
const ATTEMPTS: usize = 3;
/// A room's first curve moves through arrival time at the clock's pace
/// until the controller has measured how dense the line is.
const OPENING_SPEED: i64 = 1_000;

pub struct Publisher<G, S, E> {
    pub gate: G,
    pub store: S,
    pub edge: E,
    pub clock: Arc<dyn Clock>,
    /// The room's signing keys, published for the edge (none: no
    /// `#room-keys`, and the edge answers a room's buys 503).
    room_keys: Vec<Key>,
    /// Entries per second the origin takes at most, across the sales
    /// (the API's quota share; None: only each sale's ceiling bounds it).
    capacity: Option<f64>,
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
    /// Each room's last controller step: when, and the entries counted
    /// then (the next step's stretch starts there).
    stepped: HashMap<ProductId, (i64, u64)>,
}

/// What one publish did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Published {
    pub products: usize,
    pub written: usize,
    /// Passes that found the store moved on and started over.
    pub stale: usize,
}

impl<G: SaleGate + AdmissionGate + RoomGate, S: Catalogue, E: EdgeStore> Publisher<G, S, E> {
    pub fn new(gate: G, store: S, edge: E, clock: Arc<dyn Clock>) -> Self {
        Self {
            gate,
            store,
            edge,
            clock,
            room_keys: Vec::new(),
            capacity: None,
            memory: Mutex::default(),
        }
    }

    /// Publishes `keys` for the edge's waiting rooms and steers their
    /// inlets within `capacity` entries per second.
    pub fn with_rooms(mut self, keys: Vec<Key>, capacity: Option<f64>) -> Self {
        self.room_keys = keys;
        self.capacity = capacity;
        self
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
            if let Some(settings) = &product.waiting_room {
                let key = room::room_key(id);
                let held = stored.get(&key).and_then(|v| RoomValue::parse(v));
                if let Some(value) = self.room(&product, settings, held, now, first).await {
                    changes.push(Change::Put {
                        key,
                        value: value.encode(),
                    });
                }
            }
        }
        if !self.room_keys.is_empty() {
            let keys = room::encode_keys(&self.room_keys);
            if stored.get(room::KEYS_KEY) != Some(&keys) {
                changes.push(Change::Put {
                    key: room::KEYS_KEY.to_owned(),
                    value: keys,
                });
            }
        }
        // Ours (values this code can read) but no longer live.
        let live: std::collections::HashSet<String> = ids
            .iter()
            .flat_map(|id| [id.as_str().to_owned(), room::room_key(id)])
            .collect();
        changes.extend(
            stored
                .iter()
                .filter(|(k, v)| {
                    !live.contains(k.as_str())
                        && (EdgeValue::parse(v).is_some()
                            || (k.ends_with("#room") && RoomValue::parse(v).is_some()))
                })
                .map(|(k, _)| Change::Delete { key: k.clone() }),
        );
        {
            let mut memory = self.memory();
            memory.dryness.retain(|id, _| ids.contains(id));
            memory.stepped.retain(|id, _| ids.contains(id));
        }
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

    /// The room value to write for `product`, None when the store's is
    /// current: the opening curve where it holds none; after the start a
    /// controller step every [`Inlet::STEP_MS`] (only on a publish's first
    /// pass: a retried pass does not step twice); in between, an operator's
    /// pause or new admission life at once.
    async fn room(
        &self,
        product: &shared::domain::Product,
        settings: &WaitingRoom,
        held: Option<RoomValue>,
        now: i64,
        first: bool,
    ) -> Option<RoomValue> {
        let id = &product.product_id;
        let starts_at = shared::domain::unix_ms(product.starts_at);
        let admission_secs = i64::from(settings.admission_secs);
        let Some(held) = held else {
            let early_ms = i64::from(settings.early_window_secs) * 1000;
            let mut curve = Curve::opening(starts_at, early_ms, OPENING_SPEED);
            curve.paused = settings.paused;
            return Some(RoomValue {
                curve,
                early_window_ms: early_ms,
                admission_secs,
                density: 0,
            });
        };
        let last = self.memory().stepped.get(id).copied();
        // Before the start too: the sampled places set the opening speed
        // (the rate itself waits for the start, see Inlet::next).
        let due = first && last.is_none_or(|(at, _)| now - at >= Inlet::STEP_MS);
        if due {
            match self.health(id, &held, last, now).await {
                Ok((health, entries)) => {
                    self.memory().stepped.insert(id.clone(), (now, entries));
                    let next = Inlet::next(&held, settings, &health, now);
                    metrics::gauge!("flashsale_room_rate", "product" => id.to_string())
                        .set(Inlet::rate_of(&next));
                    return Some(RoomValue {
                        admission_secs,
                        ..next
                    });
                }
                Err(e) => {
                    tracing::warn!(product = %id, error = %e, "the room's health is unreadable; its inlet stands as it is");
                }
            }
        }
        (held.curve.paused != settings.paused || held.admission_secs != admission_secs).then(|| {
            RoomValue {
                curve: held.curve.then(now, held.curve.speed, settings.paused),
                admission_secs,
                ..held
            }
        })
    }

    /// What the origin showed since the room's last step (`last`: when,
    /// and the entries then; None after a restart, which measures nothing
    /// this step), and the entries counted now.
    async fn health(
        &self,
        id: &ProductId,
        held: &RoomValue,
        last: Option<(i64, u64)>,
        now: i64,
    ) -> PortResult<(Health, u64)> {
        let entries = self.gate.entries(id).await?;
        // The oldest order still waiting for DynamoDB: throttling or a
        // failing consumer shows here first.
        let oldest = self
            .gate
            .pending_page(id, now - Inlet::QUEUE_AGE_MS, 0, 1)
            .await?;
        let queue_age_ms = oldest
            .requests
            .first()
            .map_or(0, |r| now - r.msg.admitted_at);
        // The sampled places where the frontier goes next.
        let (from, to) = Inlet::ahead(&held.curve, now);
        let ahead = self.gate.places(id, from, to).await?;
        let (new_entries, frontier_advance_ms) = match last {
            Some((at, before)) => (
                entries.saturating_sub(before),
                held.curve.frontier(now) - held.curve.frontier(at),
            ),
            None => (0, 0),
        };
        let health = Health {
            entries: new_entries,
            frontier_advance_ms,
            capacity: self.capacity,
            queue_age_ms,
            throttles: 0,
            errors: 0,
            ahead,
        };
        Ok((health, entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::aws::DynamoStore;
    use shared::domain::{AuditEntry, from_unix_ms, unix_ms};
    use shared::fakes::ManualClock;
    use shared::ports::ControlStore;
    use shared::redis::RedisGate;

    /// The store's API as the publisher sees it: versions, If-Match, and a
    /// reply that can be lost after its write landed.
    #[derive(Clone, Default)]
    struct Store(Arc<Mutex<StoreState>>);

    #[derive(Default)]
    struct StoreState {
        version: u64,
        values: HashMap<String, String>,
        /// Every value each key held, in order.
        history: Vec<(String, String)>,
        lose_next_reply: bool,
    }

    impl EdgeStore for Store {
        async fn version(&self) -> PortResult<String> {
            Ok(self.0.lock().unwrap().version.to_string())
        }
        async fn entries(&self) -> PortResult<Vec<(String, String)>> {
            Ok(self.0.lock().unwrap().values.clone().into_iter().collect())
        }
        async fn write(&self, changes: &[Change], version: &str) -> PortResult<Written> {
            let mut s = self.0.lock().unwrap();
            if s.version.to_string() != version {
                return Ok(Written::Stale);
            }
            for c in changes {
                match c {
                    Change::Put { key, value } => {
                        s.values.insert(key.clone(), value.clone());
                        s.history.push((key.clone(), value.clone()));
                    }
                    Change::Delete { key } => {
                        s.values.remove(key);
                    }
                }
            }
            s.version += 1;
            if std::mem::take(&mut s.lose_next_reply) {
                return Err(shared::error::InfraError::transient(
                    "cloudfront-keyvaluestore",
                    "reply lost",
                ));
            }
            Ok(Written::At(s.version.to_string()))
        }
    }

    const T: i64 = 1_800_000_000_000;

    fn key() -> Key {
        Key {
            id: "k1".into(),
            secret: b"room-test-secret-0123456789abcdef".to_vec(),
        }
    }

    type TestPublisher = Publisher<RedisGate, DynamoStore, Store>;

    /// Issue 33: the room opens before the start, steps every
    /// Inlet::STEP_MS from what the store holds once the sale started,
    /// and no restart or lost publish moves its frontier back; an operator's
    /// pause reaches the edge at the next pass and lets nobody in.
    #[tokio::test]
    async fn the_inlet_opens_steps_and_never_goes_back_across_restarts_and_lost_writes() {
        let (db, _) = shared::fakes::store().await;
        let (redis, gate) = shared::fakes::simulated_gate();
        let clock = Arc::new(ManualClock::at(T));
        let mut p = shared::fakes::product("hot");
        p.starts_at = from_unix_ms(T + 60_000);
        p.ends_at = from_unix_ms(T + 3_660_000);
        let settings = WaitingRoom {
            early_window_secs: 60,
            start_rate: 10,
            ceiling: 100,
            admission_secs: 120,
            paused: false,
        };
        p.waiting_room = Some(settings);
        db.create_product(&p).await.unwrap();
        shared::fakes::warm(&gate, &p, 10).await;
        let start = unix_ms(p.starts_at);
        let store = Store::default();
        let publisher = || -> TestPublisher {
            Publisher::new(gate.clone(), db.clone(), store.clone(), clock.clone())
                .with_rooms(vec![key()], Some(50.0))
        };
        let room = || {
            let s = store.0.lock().unwrap();
            RoomValue::parse(&s.values["hot#room"]).unwrap()
        };
        let at = |ms: i64| {
            clock.set(ms);
            redis.advance(ms - redis.now_ms());
        };

        let mut a = publisher();
        a.publish().await.unwrap();
        let opening = room();
        assert_eq!(opening.curve.frontier(start), start - 60_000);
        assert_eq!(opening.admission_secs, 120);
        assert_eq!(
            room::parse_keys(&store.0.lock().unwrap().values[room::KEYS_KEY]).unwrap(),
            [key()]
        );
        // Stepped before the start too, yet nobody is let in before it and
        // the frontier stands where it opened.
        at(start - 1_000);
        a.publish().await.unwrap();
        let before = room();
        assert_eq!(before.curve.frontier(start), start - 60_000);
        assert!(!before.curve.lets_in(start - 60_000, start - 1));

        // Steps: 40 entries over the first 10 s of the early window: 4 a
        // second of arrival time.
        let id = p.product_id.clone();
        let mut frontiers = Vec::new();
        let mut now = start;
        for step in 0..12 {
            now += Inlet::STEP_MS;
            at(now);
            for n in 0..20 {
                gate.redeem(
                    &id,
                    &format!("{step:08x}{n:08x}"),
                    &format!("u{step}-{n}"),
                    60_000,
                )
                .await
                .unwrap();
            }
            match step {
                // A restart: memory gone, the store's value read back.
                4 => a = publisher(),
                // A write that landed but whose reply was lost.
                7 => store.0.lock().unwrap().lose_next_reply = true,
                _ => {}
            }
            let _ = a.publish().await;
            let r = room();
            frontiers.push((now, r.curve.frontier(now)));
            // Within the rounding of speed and density to whole numbers.
            assert!(
                Inlet::rate_of(&r) <= 50.0 * 1.001,
                "step {step}: above the origin's capacity: {r:?}"
            );
        }
        assert!(room().density > 0, "{:?}", room());
        // Every value the edge ever held, at every later time: never back.
        let history: Vec<RoomValue> = store
            .0
            .lock()
            .unwrap()
            .history
            .iter()
            .filter(|(k, _)| k == "hot#room")
            .map(|(_, v)| RoomValue::parse(v).unwrap())
            .collect();
        assert!(history.len() >= 10, "{}", history.len());
        for t in (start..=now + 10_000).step_by(500) {
            let mut last = i64::MIN;
            for (i, v) in history
                .iter()
                .enumerate()
                .filter(|(_, v)| v.curve.at_ms <= t)
            {
                let f = v.curve.frontier(t);
                assert!(
                    f >= last,
                    "value {i} at {t}: the frontier went back from {last} to {f}"
                );
                last = f;
            }
        }
        assert!(
            frontiers.windows(2).all(|w| w[1].1 >= w[0].1),
            "{frontiers:?}"
        );

        // An operator's pause: at the next pass, whether a step is due or
        // not, and nobody is let in however long they wait.
        let entry = AuditEntry {
            product_id: Some(id.clone()),
            at: from_unix_ms(now),
            actor: "test".into(),
            action: "waiting_room".into(),
            reason: "test".into(),
        };
        let paused = WaitingRoom {
            paused: true,
            ..settings
        };
        assert!(
            db.change_room(&id, &settings, &paused, &entry)
                .await
                .unwrap()
        );
        now += 100;
        at(now);
        a.publish().await.unwrap();
        let held = room();
        assert!(held.curve.paused);
        let stood = held.curve.frontier(now);
        for later in [now + 1, now + 60_000, now + 3_600_000] {
            assert!(!held.curve.lets_in(start - 60_000, later));
            assert_eq!(held.curve.frontier(later), stood);
        }
        now += Inlet::STEP_MS;
        at(now);
        a.publish().await.unwrap();
        assert!(room().curve.paused, "a step keeps the operator's pause");
        assert_eq!(room().curve.frontier(now + 60_000), stood);
    }
}
