//! The demo's life after the rush: winners pay (signed webhooks, some
//! delivered twice), cancel, or walk away; the units that come back are
//! bought by later waves of the buyers who lost, until every unit is paid
//! or the sale's time is up. Buyers act as a seeded random mix says.

use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};
use futures::StreamExt;
use serde_json::{Value, json};

use crate::client::Api;

#[derive(Debug, Clone)]
pub struct Mix {
    /// Shares of winners who pay and who cancel; the rest never pay.
    pub pay: f64,
    pub cancel: f64,
    /// Share of payments the provider delivers twice.
    pub duplicate: f64,
    /// Chaos: pay within this many ms of the deadline (either side).
    pub near_deadline_ms: Option<i64>,
}

impl Default for Mix {
    fn default() -> Self {
        Self {
            pay: 0.7,
            cancel: 0.1,
            duplicate: 0.1,
            near_deadline_ms: None,
        }
    }
}

#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub waves: usize,
    pub winners: usize,
    pub payments_sent: usize,
    /// Distinct payment events answered 200 or 409: each must end as a
    /// paid order or a refund_due record, none lost.
    pub payments_decided: usize,
    pub duplicates_sent: usize,
    pub cancels_sent: usize,
    pub walked_away: usize,
}

pub struct AfterSale<'a> {
    pub api: &'a Api,
    pub product: &'a str,
    pub secret: &'a [u8],
    pub price: u64,
    pub mix: Mix,
    pub rng: fastrand::Rng,
}

fn unix_secs() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

impl AfterSale<'_> {
    /// Drives the winners, then waves of `losers`, for at most `limit`.
    pub async fn run(
        &mut self,
        winners: Vec<(String, String)>,
        mut losers: Vec<String>,
        limit: Duration,
    ) -> Result<Tally> {
        let started = Instant::now();
        let mut tally = Tally::default();
        let mut acting = winners;
        // Each order acts once: its payment's event id is its own.
        let mut seen = std::collections::HashSet::new();
        loop {
            acting.retain(|(_, id)| seen.insert(id.clone()));
            tally.waves += 1;
            tally.winners += acting.len();
            let plans: Vec<(String, String, u8)> = acting
                .drain(..)
                .map(|(user, id)| {
                    let roll = self.rng.f64();
                    let plan = if roll < self.mix.pay {
                        0
                    } else if roll < self.mix.pay + self.mix.cancel {
                        1
                    } else {
                        2
                    };
                    (user, id, plan)
                })
                .collect();
            let dups: Vec<bool> = plans
                .iter()
                .map(|_| self.rng.f64() < self.mix.duplicate)
                .collect();
            let offsets: Vec<i64> = plans
                .iter()
                .map(|_| {
                    self.mix
                        .near_deadline_ms
                        .map_or(0, |w| self.rng.i64(-w..=w))
                })
                .collect();
            let this = &*self;
            let results: Vec<Result<u8>> =
                futures::stream::iter(plans.iter().zip(dups).zip(offsets))
                    .map(|(((user, id, plan), dup), offset)| async move {
                        match plan {
                            0 => match this.pay(id, user, dup, offset).await? {
                                None => Ok(2),
                                Some(()) if dup => Ok(3),
                                Some(()) => Ok(0),
                            },
                            1 => this.cancel(id, user).await.map(|_| 1),
                            _ => Ok(2),
                        }
                    })
                    .buffer_unordered(32)
                    .collect()
                    .await;
            for r in results {
                match r? {
                    0 => {
                        tally.payments_sent += 1;
                        tally.payments_decided += 1;
                    }
                    3 => {
                        tally.payments_sent += 1;
                        tally.payments_decided += 1;
                        tally.duplicates_sent += 1;
                    }
                    1 => tally.cancels_sent += 1,
                    _ => tally.walked_away += 1,
                }
            }
            // Done when every unit is paid; else the next wave, as many
            // losers as units are back on sale (twice that: some are slow).
            let stats = self.stats().await?;
            let number = |k: &str| stats[k].as_i64().unwrap_or(0);
            if number("paid_units") >= number("stock_total") || started.elapsed() > limit {
                break;
            }
            let left = usize::try_from(number("stock_left")).unwrap_or(0);
            if left == 0 {
                // Reservations still open: wait for payments or expiries.
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            if losers.is_empty() {
                break;
            }
            let wave: Vec<String> = losers.drain(..losers.len().min(left * 2)).collect();
            for user in wave {
                let answer = self
                    .api
                    .buy(
                        &json!({ "product_id": self.product, "quantity": 1, "user_id": user }),
                        None,
                    )
                    .await?;
                match answer.status {
                    202 => {
                        let id = answer.body["request_id"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned();
                        acting.push((user, id));
                    }
                    // Sold out (perhaps from an instance's one-second cache)
                    // or unavailable: this buyer tries again in a later wave.
                    410 | 503 => losers.push(user),
                    _ => {}
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(tally)
    }

    /// The product's stats; a 503 (its ledger read met writes in flight) is
    /// asked again, so a busy moment does not read as "nothing left".
    async fn stats(&self) -> Result<Value> {
        let path = format!("/api/admin/products/{}", self.product);
        for _ in 0..20 {
            let answer = self.api.admin("GET", &path, None).await?;
            if answer.status == 200 {
                return Ok(answer.body);
            }
            ensure!(
                answer.status == 503,
                "product stats answered {} {}",
                answer.status,
                answer.body
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        bail!("product stats answered 503 for 5 s")
    }

    /// Waits for the order to be placed (its reservation is what a payment
    /// link would carry), then pays it `offset_ms` from its deadline when
    /// timed near it (chaos), else at once; `twice` delivers it twice.
    /// None when the buyer found no reservation to pay.
    async fn pay(&self, id: &str, user: &str, twice: bool, offset_ms: i64) -> Result<Option<()>> {
        let order = self.placed(id, user).await?;
        let Some(order) = order else { return Ok(None) };
        if self.mix.near_deadline_ms.is_some()
            && let Some(pay_by) = order["pay_by"].as_str()
        {
            let pay_by = time::OffsetDateTime::parse(
                pay_by,
                &time::format_description::well_known::Rfc3339,
            )?;
            let at = pay_by + time::Duration::milliseconds(offset_ms);
            let wait = at - time::OffsetDateTime::now_utc();
            if wait.is_positive() {
                tokio::time::sleep(wait.unsigned_abs()).await;
            }
        }
        let event = json!({
            "event_id": format!("evt-{id}"), "request_id": id, "amount": self.price,
            "currency": "EUR", "status": "succeeded",
        });
        let deliver = || async {
            for _ in 0..50 {
                let answer = self.api.webhook(self.secret, unix_secs(), &event).await?;
                // 503: not placed yet, or a fault; the provider delivers again.
                match answer.status {
                    200 | 409 => return Ok(answer.status),
                    503 => {}
                    other => bail!("payment {id} was answered {other}: {}", answer.body),
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            bail!("payment {id} was answered 503 fifty times")
        };
        if twice {
            let (a, b) = tokio::join!(deliver(), deliver());
            ensure!(
                a? == b?,
                "payment {id} delivered twice was answered differently"
            );
        } else {
            deliver().await?;
        }
        Ok(Some(()))
    }

    async fn cancel(&self, id: &str, user: &str) -> Result<()> {
        if self.placed(id, user).await?.is_none() {
            return Ok(());
        }
        for _ in 0..50 {
            if self.api.cancel(id, user).await?.status != 503 {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        bail!("cancel of {id} was answered 503 fifty times")
    }

    /// The order while it is a reservation; None once it is anything else
    /// (never placed, or already expired before this buyer looked).
    async fn placed(&self, id: &str, user: &str) -> Result<Option<Value>> {
        for _ in 0..1200 {
            let answer = self.api.order(id, user).await?;
            match answer.body["status"].as_str() {
                Some("placed") => return Ok(Some(answer.body)),
                Some("pending") | None => tokio::time::sleep(Duration::from_millis(100)).await,
                Some(_) => return Ok(None),
            }
        }
        bail!("order {id} was not decided within 120 s")
    }
}
