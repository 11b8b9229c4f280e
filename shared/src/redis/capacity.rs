//! Redis nodes at capacity, modelled for benchmarks (feature
//! `node-capacity`), as tools::capacity models DynamoDB's per-item limits:
//! each hash tag's slot stands for a node of its own (a cluster spreads a
//! product's stock buckets over its shards) that runs at most a set number
//! of script calls a second; a call beyond that waits its turn, as calls
//! queue on a saturated node. Other commands pass straight through.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use redis::{Arg, Cmd};
use tokio::time::Instant;

pub struct Nodes {
    /// One script call's share of a node's second.
    gap: Duration,
    /// Per node (hash tag): when its next script call may start, and how
    /// many it ran.
    nodes: Mutex<HashMap<Vec<u8>, (Instant, u64)>>,
}

use super::keys::hash_tag;

impl Nodes {
    pub fn new(script_calls_per_sec: f64) -> Self {
        Self {
            gap: Duration::from_secs_f64(1.0 / script_calls_per_sec.max(1e-3)),
            nodes: Mutex::new(HashMap::new()),
        }
    }

    /// Waits for `cmd`'s node's turn when it runs a script (EVALSHA or
    /// EVAL: its first key names the node).
    pub(super) async fn turn(&self, cmd: &Cmd) {
        let args: Vec<&[u8]> = cmd
            .args_iter()
            .filter_map(|a| match a {
                Arg::Simple(b) => Some(b),
                _ => None,
            })
            .take(4)
            .collect();
        let script = args
            .first()
            .is_some_and(|n| n.eq_ignore_ascii_case(b"EVALSHA") || n.eq_ignore_ascii_case(b"EVAL"));
        let (true, Some(key)) = (script, args.get(3)) else {
            return;
        };
        let at = {
            let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let node = nodes.entry(hash_tag(key).to_vec()).or_insert((now, 0));
            let at = node.0.max(now);
            *node = (at + self.gap, node.1 + 1);
            at
        };
        tokio::time::sleep_until(at).await;
    }

    /// Script calls each node ran, by hash tag.
    pub fn served(&self) -> BTreeMap<String, u64> {
        self.nodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(tag, (_, n))| (String::from_utf8_lossy(tag).into_owned(), *n))
            .collect()
    }
}
