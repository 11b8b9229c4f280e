//! The operators' deny list: recorded in DynamoDB (`DENY#<user>`), copied
//! into each sale's Redis hash so that admission reads it in the sale's own
//! cluster slot (`admit.lua`, 403 `buyer_blocked`).

use std::collections::HashMap;

use crate::domain::UserId;
use crate::error::InfraError;
use crate::ports::{ControlGate, ControlStore};

/// One run's view of the recorded list, to bring sales' copies in line.
/// The list comes from an index that may lag a change by a moment, so a
/// copy is changed only after a consistent read of that buyer's entry: a
/// stale list can neither block again a buyer just taken off nor free one
/// just added.
pub struct DenyList {
    now_ms: i64,
    /// Active entries: buyer -> blocked until (ms, 0 = until removed).
    listed: HashMap<UserId, i64>,
}

impl DenyList {
    pub async fn read<S: ControlStore>(store: &S, now_ms: i64) -> Result<Self, InfraError> {
        let listed = store
            .denials()
            .await?
            .into_iter()
            .filter(|d| d.active(now_ms))
            .map(|d| {
                let until = d.until_ms();
                (d.user_id, until)
            })
            .collect();
        Ok(Self { now_ms, listed })
    }

    /// Brings one sale's copy in line; returns (entries added or changed,
    /// entries removed).
    pub async fn sync<G: ControlGate, S: ControlStore>(
        &self,
        gate: &G,
        store: &S,
        product: &crate::domain::ProductId,
    ) -> Result<(usize, usize), InfraError> {
        let held: HashMap<UserId, i64> = gate.denials(product).await?.into_iter().collect();
        let mut differing: Vec<UserId> = self
            .listed
            .iter()
            .filter(|(user, until)| held.get(*user) != Some(*until))
            .map(|(user, _)| user.clone())
            .collect();
        differing.extend(
            held.keys()
                .filter(|user| !self.listed.contains_key(*user))
                .cloned(),
        );
        let (mut add, mut remove) = (Vec::new(), Vec::new());
        // Read just before this sale's write, not once per run: an
        // operator's change made meanwhile must not be undone here.
        for user in differing {
            let now = self.now_ms;
            let until = store
                .denial(&user)
                .await?
                .filter(|d| d.active(now))
                .map(|d| d.until_ms());
            match until {
                Some(until) if held.get(&user) != Some(&until) => add.push((user, until)),
                Some(_) => {}
                None if held.contains_key(&user) => remove.push(user),
                None => {}
            }
        }
        gate.set_denials(product, &add, &remove).await?;
        Ok((add.len(), remove.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{AuditEntry, Denial, ProductId, from_unix_ms};
    use crate::fakes::FakeGate;

    const NOW: i64 = 1_700_000_000_000;

    fn denial(user: &str, until: Option<i64>) -> Denial {
        Denial {
            user_id: UserId::parse(user).unwrap(),
            reason: "bot".into(),
            actor: "ops".into(),
            at: from_unix_ms(NOW - 1),
            until: until.map(from_unix_ms),
        }
    }

    fn entry() -> AuditEntry {
        AuditEntry {
            product_id: None,
            at: from_unix_ms(NOW),
            actor: "ops".into(),
            action: "deny".into(),
            reason: "bot".into(),
        }
    }

    fn held(gate: &FakeGate, p: &ProductId) -> Vec<(String, i64)> {
        let mut v: Vec<(String, i64)> = gate.denials.lock().unwrap()[p]
            .iter()
            .map(|(u, t)| (u.to_string(), *t))
            .collect();
        v.sort();
        v
    }

    #[tokio::test]
    async fn a_sale_copy_follows_the_record_and_a_stale_list_changes_nothing() {
        let (gate, store) = (FakeGate::default(), crate::fakes::store().await.0);
        let p = ProductId::parse("p1").unwrap();
        for d in [
            denial("bot", None),
            denial("lapsed", Some(NOW - 1)),
            denial("brief", Some(NOW + 60_000)),
        ] {
            store
                .set_denial(&d.user_id.clone(), Some(&d), &entry())
                .await
                .unwrap();
        }
        // A copy that forgot "bot" (failover) and holds one taken off.
        let gone = UserId::parse("gone").unwrap();
        gate.set_denials(&p, &[(gone.clone(), 0)], &[])
            .await
            .unwrap();
        let list = DenyList::read(&store, NOW).await.unwrap();
        assert_eq!(list.sync(&gate, &store, &p).await.unwrap(), (2, 1));
        assert_eq!(
            held(&gate, &p),
            [("bot".into(), 0), ("brief".into(), NOW + 60_000)]
        );

        // The list was read before "bot" was taken off and "new" added: the
        // consistent reads win.
        let stale = DenyList::read(&store, NOW).await.unwrap();
        let bot = UserId::parse("bot").unwrap();
        store.set_denial(&bot, None, &entry()).await.unwrap();
        gate.set_denials(&p, &[], &[bot]).await.unwrap();
        let new = denial("new", None);
        store
            .set_denial(&new.user_id, Some(&new), &entry())
            .await
            .unwrap();
        gate.set_denials(&p, &[(new.user_id.clone(), 0)], &[])
            .await
            .unwrap();

        stale.sync(&gate, &store, &p).await.unwrap();
        assert_eq!(
            held(&gate, &p),
            [("brief".into(), NOW + 60_000), ("new".into(), 0)]
        );
    }
}
