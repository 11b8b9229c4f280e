//! Per instance: which products are worth a call. DynamoDB's list of sales
//! on or not long over ([`Catalogue::live_products`], which no failover
//! forgets), read at most once per period, so a request for any other id
//! is refused in process: a caller rotating made-up product ids costs no
//! Redis call and no DynamoDB read (issue 31). A product the list holds
//! never waits for it: the list is read again only for an id it lacks,
//! once per period per instance, and when it cannot be read the request
//! goes on as if the product were known (the admission script decides).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use crate::domain::ProductId;
use crate::ports::{Catalogue, Clock};

/// How long after its end a sale stays in the list (the sweeper retires it
/// from Redis then): its buyers still hear `sale_ended`, not an unknown id.
pub const KEEP_AFTER_END_MS: i64 = 3_600_000;

/// The longest a request waits for the list before going on without it.
pub const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(300);

/// What the list says of a product id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Known {
    /// Listed: on sale, upcoming or ended within the hour.
    Live,
    /// Not in a list read within the period: refuse it without a call.
    Unknown,
    /// No list fresh enough to say, and none could be read (DynamoDB
    /// failing; asked again a period later): let the request go on.
    Unsure,
}

pub struct LiveProducts {
    /// None: off (benchmarks of the admission path alone): always Unsure.
    clock: Option<Arc<dyn Clock>>,
    period_ms: i64,
    state: Mutex<State>,
    /// One read at a time: other misses wait for it, and use what it read.
    reading: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct State {
    /// The last list read, and when (ms).
    list: Option<(i64, Arc<HashSet<ProductId>>)>,
    /// The last read tried, successful or not: a failing DynamoDB is asked
    /// once per period, not on every request.
    tried_at: Option<i64>,
}

impl LiveProducts {
    pub fn new(clock: Arc<dyn Clock>, period: std::time::Duration) -> Self {
        Self {
            clock: Some(clock),
            period_ms: i64::try_from(period.as_millis()).unwrap_or(i64::MAX),
            state: Mutex::default(),
            reading: tokio::sync::Mutex::new(()),
        }
    }

    /// Never reads, never refuses: for a benchmark of the path after it.
    pub fn off() -> Self {
        Self {
            clock: None,
            period_ms: 0,
            state: Mutex::default(),
            reading: tokio::sync::Mutex::new(()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What the list says of `id`, read again first when it lacks `id` and
    /// is older than the period (0: on every miss). Misses wait for one
    /// read at a time, and a read made while one waited answers for it.
    pub async fn check<S: Catalogue>(&self, store: &S, id: &ProductId) -> Known {
        let Some(clock) = &self.clock else {
            return Known::Unsure;
        };
        let now = clock.now_ms();
        if let Some(known) = self.listed(id, now) {
            return known;
        }
        let _reading = self.reading.lock().await;
        if let Some(known) = self.listed(id, now) {
            return known;
        }
        // A read failed within the period: DynamoDB is not asked again on
        // every request meanwhile.
        if self.state().tried_at.is_some_and(|at| self.fresh(at, now)) {
            return Known::Unsure;
        }
        match self.read(store, now).await {
            Ok(ids) if ids.contains(id) => Known::Live,
            Ok(_) => Known::Unknown,
            Err(e) => {
                tracing::warn!(error = %e, "the list of live products is unreadable; unknown product ids go on to Redis meanwhile");
                Known::Unsure
            }
        }
    }

    /// A list read at `at` still speaks for a request that arrived at `now`.
    fn fresh(&self, at: i64, now: i64) -> bool {
        at >= now || now - at < self.period_ms
    }

    /// Live when listed; Unknown when not, in a list fresh for `now`.
    fn listed(&self, id: &ProductId, now: i64) -> Option<Known> {
        let s = self.state();
        let (at, ids) = s.list.as_ref()?;
        if ids.contains(id) {
            Some(Known::Live)
        } else {
            self.fresh(*at, now).then_some(Known::Unknown)
        }
    }

    /// Reads the list now (an instance's init warm-up, so its first buyers
    /// do not wait for it).
    pub async fn load<S: Catalogue>(&self, store: &S) -> crate::ports::PortResult<()> {
        let Some(clock) = &self.clock else {
            return Ok(());
        };
        let _reading = self.reading.lock().await;
        self.read(store, clock.now_ms()).await.map(drop)
    }

    async fn read<S: Catalogue>(
        &self,
        store: &S,
        now: i64,
    ) -> crate::ports::PortResult<Arc<HashSet<ProductId>>> {
        self.state().tried_at = Some(now);
        // A slow DynamoDB must not hold a buy (one per instance in Lambda)
        // for the SDK's seconds: past this the request goes on to Redis.
        let listed =
            tokio::time::timeout(READ_TIMEOUT, store.live_products(now - KEEP_AFTER_END_MS))
                .await
                .map_err(|_| {
                    crate::error::InfraError::transient(
                        "dynamodb",
                        format!("the list of live products took over {READ_TIMEOUT:?}"),
                    )
                })??;
        let ids: Arc<HashSet<ProductId>> = Arc::new(listed.into_iter().collect());
        self.state().list = Some((now, ids.clone()));
        Ok(ids)
    }
}

/// Per instance: the refusals a buyer earned that no wait or stock could
/// change (an unknown product, an ended sale, a limit reached, a key
/// reused, a denied buyer; deduct says which), metered across every
/// product, GCRA-style: `burst` at once,
/// then one per `interval`. Past it the buyer is answered 429 in process,
/// with no call, whatever product they name next. A real buyer earns one
/// refusal a sale; a caller rotating product ids earns one per request.
pub struct RefusalBudget {
    clock: Arc<dyn Clock>,
    interval_ms: i64,
    burst: i64,
    /// Each buyer's theoretical arrival time (ms).
    tat: Mutex<std::collections::HashMap<crate::domain::UserId, i64>>,
}

/// The most buyers an instance meters before it forgets the idle ones.
const BUDGET_ENTRIES: usize = 100_000;

impl RefusalBudget {
    pub fn new(clock: Arc<dyn Clock>, interval: std::time::Duration, burst: u32) -> Self {
        Self {
            clock,
            interval_ms: i64::try_from(interval.as_millis()).unwrap_or(i64::MAX),
            burst: i64::from(burst.max(1)),
            tat: Mutex::default(),
        }
    }

    fn tat(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<crate::domain::UserId, i64>> {
        self.tat.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// None while `user` may still be heard; else the ms until they may.
    pub fn exhausted(&self, user: &crate::domain::UserId) -> Option<i64> {
        let now = self.clock.now_ms();
        let tat = *self.tat().get(user)?;
        let wait = tat - now - (self.burst - 1) * self.interval_ms;
        (wait > 0).then_some(wait)
    }

    /// Counts one refusal against `user`.
    pub fn charge(&self, user: &crate::domain::UserId) {
        let now = self.clock.now_ms();
        let mut tat = self.tat();
        if tat.len() >= BUDGET_ENTRIES {
            tat.retain(|_, t| *t > now);
            if tat.len() >= BUDGET_ENTRIES {
                tat.clear();
            }
        }
        let t = tat.entry(user.clone()).or_insert(now);
        *t = (*t).max(now) + self.interval_ms;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fakes::{ManualClock, add_product, store};
    use std::time::Duration;

    const NOW: i64 = 1_700_000_000_000;

    #[tokio::test]
    async fn an_unlisted_id_is_refused_and_the_list_read_once_a_period() {
        let (store, faults) = store().await;
        // fakes::product's sale runs for the hour around the wall clock.
        let clock = Arc::new(ManualClock::at(
            time::OffsetDateTime::now_utc().unix_timestamp() * 1000,
        ));
        add_product(&store, "p1", 5).await;
        let live = LiveProducts::new(clock.clone(), Duration::from_secs(1));
        let id = |s: &str| ProductId::parse(s).unwrap();
        assert_eq!(live.check(&store, &id("p1")).await, Known::Live);
        // Made-up ids within the period: refused with no read (a read now
        // would fail).
        faults.fail_next(1);
        for n in 0..100 {
            assert_eq!(
                live.check(&store, &id(&format!("x{n}"))).await,
                Known::Unknown
            );
        }
        // The armed fault is still there: none of them made a call.
        use crate::ports::Catalogue;
        let p2 = crate::fakes::product("p2");
        assert!(store.create_product(&p2).await.is_err());
        // A product created since is seen once the period passed.
        assert!(store.create_product(&p2).await.unwrap());
        assert_eq!(live.check(&store, &id("p2")).await, Known::Unknown);
        clock.set(clock.now_ms() + 1_000);
        // DynamoDB failing: requests go on; the next read waits a period
        // (the armed fault is left for the read after it).
        faults.fail_next(1);
        assert_eq!(live.check(&store, &id("p2")).await, Known::Unsure);
        faults.fail_next(1);
        assert_eq!(live.check(&store, &id("p2")).await, Known::Unsure);
        clock.set(clock.now_ms() + 1_000);
        faults.clear();
        assert_eq!(live.check(&store, &id("p2")).await, Known::Live);
        // A listed product never waits for a read, however old the list.
        clock.set(clock.now_ms() + 60_000);
        faults.fail_next(1);
        assert_eq!(live.check(&store, &id("p1")).await, Known::Live);
    }

    #[test]
    fn refusals_are_metered_per_buyer_across_products() {
        let clock = Arc::new(ManualClock::at(NOW));
        let budget = RefusalBudget::new(clock.clone(), Duration::from_secs(1), 3);
        let (bot, buyer) = (
            crate::domain::UserId::parse("bot").unwrap(),
            crate::domain::UserId::parse("buyer").unwrap(),
        );
        for _ in 0..3 {
            assert_eq!(budget.exhausted(&bot), None);
            budget.charge(&bot);
        }
        assert_eq!(budget.exhausted(&bot), Some(1_000));
        assert_eq!(
            budget.exhausted(&buyer),
            None,
            "only the one who earned them"
        );
        clock.set(NOW + 1_000);
        assert_eq!(budget.exhausted(&bot), None, "one more a second");
        budget.charge(&bot);
        assert_eq!(budget.exhausted(&bot), Some(1_000));
    }

    #[tokio::test]
    async fn no_list_yet_lets_requests_go_on() {
        let (store, faults) = store().await;
        let live = LiveProducts::new(Arc::new(ManualClock::at(NOW)), Duration::from_secs(1));
        faults.fail_next(1);
        let p = ProductId::parse("p1").unwrap();
        assert_eq!(live.check(&store, &p).await, Known::Unsure);
    }
}
