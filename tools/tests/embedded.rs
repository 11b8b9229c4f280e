//! The adapter on the embedded DynamoDB (shared::embedded) under the faults
//! the emulators cannot show: a write that committed but whose reply was
//! lost (the SDK retries it with its idempotency token), calls refused for
//! contention, and secondary indexes that lag. No stack needed.

mod common;

use common::{order, payment, product, stock_change};
use shared::aws::DynamoStore;
use shared::domain::{OrderStatus, Quantity};
use shared::ports::prelude::*;
use shared::ports::{PaymentWrite, Placement, Transition};
use tools::embedded::Embedded;

async fn store() -> (Embedded, DynamoStore) {
    let e = Embedded::new().unwrap();
    let sdk = e.sdk();
    tools::provision::create_table(&sdk, "flashsale")
        .await
        .unwrap();
    (e.clone(), DynamoStore::new(&sdk, "flashsale"))
}

/// Every write of the lifecycle, each with its first reply lost: each
/// lands once and answers as if nothing had happened.
// Paused: the SDK's retry backoff passes at once.
#[tokio::test(start_paused = true)]
async fn writes_whose_replies_were_lost_land_once() {
    let (e, store) = store().await;
    let p = product("lost", 4, 2);
    e.faults.lose_next_replies(1);
    assert!(store.create_product(&p).await.unwrap(), "created");

    let terms = p.reservation(Quantity::new(1).unwrap(), 0);
    let (a, b) = (order(&p, "a", 1), order(&p, "b", 1));
    e.faults.lose_next_replies(1);
    assert_eq!(store.place(&a, &terms).await.unwrap(), Placement::Placed);
    e.faults.lose_next_replies(1);
    assert_eq!(store.place(&b, &terms).await.unwrap(), Placement::Placed);

    let paid = store.order(&a.request_id).await.unwrap().unwrap();
    let event = payment(&paid, "evt-lost-1");
    e.faults.lose_next_replies(1);
    let first = store.pay(&paid, &event, 0).await.unwrap();
    let again = store.pay(&paid, &event, 0).await.unwrap();
    assert_eq!(
        (first, again),
        (PaymentWrite::Written, PaymentWrite::EventExists)
    );

    let released = store.order(&b.request_id).await.unwrap().unwrap();
    e.faults.lose_next_replies(1);
    assert_eq!(
        store
            .release(&released, OrderStatus::Cancelled, 0)
            .await
            .unwrap(),
        Transition::Done
    );

    let (change, entry) = stock_change(&p, "w1", -1);
    e.faults.lose_next_replies(1);
    let (rec, fresh) = store.change_stock(&change, &entry).await.unwrap().unwrap();
    assert!(rec.applied, "{rec:?} fresh={fresh}");

    let l = store.ledger(&p.product_id).await.unwrap().unwrap();
    // 4 units: 2 placed, 1 of them paid, 1 released, 1 withdrawn.
    assert_eq!(
        (l.remaining, l.paid, l.released, l.withdrawn),
        (2, 1, 1, 1),
        "{l:?}"
    );
}

/// The same writes with the SDK's retries off: each lost reply reaches
/// the caller as a transient error although the write committed, and the
/// caller's repeat (a new call, as a redelivery makes) is answered as the
/// repeat of a committed write, never applied twice.
#[tokio::test]
async fn a_write_whose_reply_was_lost_is_an_error_and_its_repeat_finds_it_done() {
    let (e, _) = store().await;
    let sdk = e
        .sdk()
        .into_builder()
        .retry_config(aws_config::retry::RetryConfig::disabled())
        .build();
    let store = DynamoStore::new(&sdk, "flashsale");
    let p = product("once", 4, 2);
    assert!(store.create_product(&p).await.unwrap());
    let lost = |e: &Embedded| e.faults.lose_next_replies(1);

    let terms = p.reservation(Quantity::new(1).unwrap(), 0);
    let (a, b) = (order(&p, "a", 1), order(&p, "b", 1));
    for o in [&a, &b] {
        lost(&e);
        let err = store.place(o, &terms).await.unwrap_err();
        assert!(err.is_transient(), "{err}");
        assert_eq!(
            store.place(o, &terms).await.unwrap(),
            Placement::Exists(OrderStatus::Placed)
        );
    }

    let paid = store.order(&a.request_id).await.unwrap().unwrap();
    let event = payment(&paid, "evt-once-1");
    lost(&e);
    assert!(
        store
            .pay(&paid, &event, 0)
            .await
            .unwrap_err()
            .is_transient()
    );
    assert_eq!(
        store.pay(&paid, &event, 0).await.unwrap(),
        PaymentWrite::EventExists
    );

    let released = store.order(&b.request_id).await.unwrap().unwrap();
    lost(&e);
    let err = store.release(&released, OrderStatus::Cancelled, 0).await;
    assert!(err.unwrap_err().is_transient());
    assert_eq!(
        store
            .release(&released, OrderStatus::Cancelled, 0)
            .await
            .unwrap(),
        Transition::Refused(OrderStatus::Cancelled)
    );

    let (change, entry) = stock_change(&p, "w1", -1);
    lost(&e);
    assert!(
        store
            .change_stock(&change, &entry)
            .await
            .unwrap_err()
            .is_transient()
    );
    let (rec, fresh) = store.change_stock(&change, &entry).await.unwrap().unwrap();
    assert!(rec.applied && !fresh, "{rec:?} fresh={fresh}");

    let l = store.ledger(&p.product_id).await.unwrap().unwrap();
    assert_eq!(
        (l.remaining, l.paid, l.released, l.withdrawn),
        (2, 1, 1, 1),
        "{l:?}"
    );
}

/// A transaction refused for contention three times in a row (the SDK's
/// own retries, then the adapter's) still places the order once.
#[tokio::test(start_paused = true)]
async fn a_placement_refused_for_contention_is_placed_once() {
    let (e, store) = store().await;
    let p = product("lost", 2, 1);
    assert!(store.create_product(&p).await.unwrap());
    let terms = p.reservation(Quantity::new(1).unwrap(), 0);
    let a = order(&p, "a", 1);
    e.faults.refuse_next(3);
    assert_eq!(store.place(&a, &terms).await.unwrap(), Placement::Placed);
    assert_eq!(
        store
            .ledger(&p.product_id)
            .await
            .unwrap()
            .unwrap()
            .remaining,
        1
    );
}

/// Lagging secondary indexes: a query on the due index sees the table as
/// it was, the base table is current, and the index catches up once the
/// lag has passed; a client without faults reads the index current.
#[tokio::test(start_paused = true)]
async fn a_lagging_index_shows_the_table_as_it_was() {
    let (e, store) = store().await;
    let p = product("lag", 2, 1);
    assert!(store.create_product(&p).await.unwrap());
    // Due at once: placed with its deadline already past.
    let terms = p.reservation(Quantity::new(1).unwrap(), -10_000_000);
    e.faults.lag_indexes(std::time::Duration::from_secs(2));
    let a = order(&p, "a", 1);
    assert_eq!(store.place(&a, &terms).await.unwrap(), Placement::Placed);
    let due = |s: &DynamoStore| {
        let s = s.clone();
        async move { s.due(i64::MAX / 2, 10).await.unwrap().len() }
    };
    assert_eq!(due(&store).await, 0, "the index has not seen the order yet");
    assert!(store.order(&a.request_id).await.unwrap().is_some());
    let current = DynamoStore::new(&e.sdk_without_faults(), "flashsale");
    assert_eq!(due(&current).await, 1);
    tokio::time::advance(std::time::Duration::from_secs(2)).await;
    assert_eq!(due(&store).await, 1, "caught up");
}
