//! A real Redis Cluster on loopback (3 primaries, 3 replicas), started from
//! `redis-server` on free ports and stopped by PID, and the failover drill
//! that makes it forget acknowledged writes:
//!
//! 1. freeze the replica of the product's primary (SIGSTOP);
//! 2. drop the primary's replication link (`CLIENT KILL TYPE replica`),
//!    otherwise the kernel still delivers the stream when the replica wakes;
//! 3. let writes land on the primary alone (acknowledged to clients);
//! 4. pause the primary's writers (`CLIENT PAUSE … WRITE`) and read a
//!    counter there, kill -9 it, resume the replica and read the same
//!    counter there before it is promoted (~2.4 s with
//!    `cluster-node-timeout 1000`): the difference is what was lost.
//!
//! Tests own their cluster (stopped on drop); the demo starts one detached
//! (`flashsale cluster up`), whose PID files `localstack/stop.sh` stops.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

const NODES: usize = 6;

pub struct Node {
    pub port: u16,
    pub pid: u32,
    /// Owned nodes are stopped on drop; detached ones by their PID file.
    child: Option<Child>,
    /// Killed by the drill: not stopped again.
    dead: bool,
}

pub struct RedisCluster {
    pub nodes: Vec<Node>,
    dir: PathBuf,
    owned: bool,
}

/// What one failover drill did.
#[derive(Debug, Clone, Copy)]
pub struct Drill {
    /// From the primary's death to the replica serving the slot.
    pub promoted_in: Duration,
    /// Admissions the primary had acknowledged that the new primary lacks.
    pub lost_writes: i64,
}

/// A free port whose cluster bus port (port + 10000) is free and valid too.
fn free_port() -> Result<u16> {
    for _ in 0..100 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let bus_free = port
            .checked_add(10_000)
            .is_some_and(|bus| std::net::TcpListener::bind(("127.0.0.1", bus)).is_ok());
        if bus_free {
            return Ok(port);
        }
    }
    bail!("no free port pair (port, port + 10000) on loopback")
}

/// redis-cli for this cluster's servers, which have no password: the
/// stack's (REDISCLI_AUTH, in its env) would make every call fail.
fn redis_cli() -> Command {
    let mut cli = Command::new("redis-cli");
    cli.env_remove("REDISCLI_AUTH");
    cli
}

/// `redis-cli -p <port> <args…>`, its stdout.
pub fn cli(port: u16, args: &[&str]) -> Result<String> {
    let out = redis_cli()
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .context("running redis-cli (apt install redis-tools)")?;
    ensure!(
        out.status.success(),
        "redis-cli -p {port} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn signal(pid: u32, sig: &str) -> Result<()> {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .context("running kill")?
        .success();
    ensure!(ok, "kill {sig} {pid} failed");
    Ok(())
}

/// One line of `CLUSTER NODES`.
struct NodeLine {
    id: String,
    port: u16,
    primary: bool,
    primary_id: String,
    /// The line of the node that answered.
    myself: bool,
    failed: bool,
    slots: Vec<(u16, u16)>,
}

fn parse_nodes(text: &str) -> Vec<NodeLine> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let port = f.get(1)?.split(['@', ':']).nth(1)?.parse().ok()?;
            let flags = *f.get(2)?;
            let slots = f
                .iter()
                .skip(8)
                .filter(|s| !s.starts_with('['))
                .filter_map(|s| match s.split_once('-') {
                    Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                    None => s.parse().ok().map(|n| (n, n)),
                })
                .collect();
            Some(NodeLine {
                id: f[0].to_owned(),
                port,
                primary: flags.contains("master"),
                primary_id: f.get(3)?.to_string(),
                myself: flags.contains("myself"),
                failed: flags.contains("fail") && !flags.contains("pfail"),
                slots,
            })
        })
        .collect()
}

impl RedisCluster {
    /// Starts six nodes and joins them: three primaries, one replica each.
    /// They are stopped when this value is dropped.
    pub fn start() -> Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "flashsale-cluster-{}",
            uuid::Uuid::new_v4().simple()
        ));
        Self::launch(&dir, true)
    }

    /// Starts a cluster that outlives this process: its nodes' PIDs go to
    /// `<dir>/redis-cluster-<port>.pid` (for `localstack/stop.sh`) and
    /// `<dir>/cluster.nodes` (for [`Self::attach`]).
    pub fn start_detached(dir: &Path) -> Result<Self> {
        let c = Self::launch(&dir.join("cluster"), false)?;
        let mut list = String::new();
        for n in &c.nodes {
            std::fs::write(
                dir.join(format!("redis-cluster-{}.pid", n.port)),
                n.pid.to_string(),
            )?;
            list.push_str(&format!("{} {}\n", n.port, n.pid));
        }
        std::fs::write(dir.join("cluster.nodes"), list)?;
        Ok(c)
    }

    /// The detached cluster [`Self::start_detached`] left in `dir`.
    pub fn attach(dir: &Path) -> Result<Self> {
        let list = std::fs::read_to_string(dir.join("cluster.nodes"))
            .with_context(|| format!("no cluster in {} (flashsale cluster up)", dir.display()))?;
        let nodes = list
            .lines()
            .filter_map(|l| {
                let (port, pid) = l.split_once(' ')?;
                Some(Node {
                    port: port.parse().ok()?,
                    pid: pid.parse().ok()?,
                    child: None,
                    dead: false,
                })
            })
            .collect();
        Ok(Self {
            nodes,
            dir: dir.join("cluster"),
            owned: false,
        })
    }

    fn launch(dir: &Path, owned: bool) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut cluster = Self {
            nodes: Vec::new(),
            dir: dir.to_owned(),
            owned,
        };
        for _ in 0..NODES {
            let port = free_port()?;
            let child = Command::new("redis-server")
                .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
                .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "1000"])
                .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
                .args(["--logfile", &format!("node-{port}.log")])
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(&cluster.dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting redis-server (apt install redis-server)")?;
            cluster.nodes.push(Node {
                port,
                pid: child.id(),
                child: Some(child),
                dead: false,
            });
        }
        for n in &cluster.nodes {
            wait(Duration::from_secs(10), || {
                Ok(cli(n.port, &["ping"]).is_ok_and(|r| r == "PONG"))
            })
            .with_context(|| format!("redis-server on :{} did not answer", n.port))?;
        }
        let mut create = redis_cli();
        create.args(["--cluster", "create"]);
        for n in &cluster.nodes {
            create.arg(format!("127.0.0.1:{}", n.port));
        }
        let out = create
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .context("running redis-cli --cluster create")?;
        ensure!(
            out.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        cluster.wait_healthy(Duration::from_secs(20))?;
        Ok(cluster)
    }

    /// The seed list for `FLASHSALE_REDIS_URL` in cluster mode.
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn alive(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(|n| !n.dead)
    }

    /// Every live node says `cluster_state:ok`, all 16384 slots are served,
    /// and every replica is in sync (a replica that never synced refuses to
    /// take over: its data would be too old).
    pub fn wait_healthy(&self, timeout: Duration) -> Result<()> {
        wait(timeout, || {
            Ok(self.alive().all(|n| {
                let ok = cli(n.port, &["cluster", "info"]).is_ok_and(|i| {
                    i.contains("cluster_state:ok") && i.contains("cluster_slots_ok:16384")
                });
                let synced = cli(n.port, &["info", "replication"]).is_ok_and(|r| {
                    r.contains("role:master") || r.contains("master_link_status:up")
                });
                ok && synced
            }))
        })
        .context("the cluster did not become healthy")
    }

    pub fn slot_of(&self, key: &str) -> Result<u16> {
        let port = self.alive().next().context("no live node")?.port;
        cli(port, &["cluster", "keyslot", key])?
            .parse()
            .context("CLUSTER KEYSLOT answered a non-number")
    }

    /// The ports of the primary serving `slot` and of its replica.
    pub fn primary_and_replica(&self, slot: u16) -> Result<(u16, u16)> {
        let port = self.alive().next().context("no live node")?.port;
        let nodes = parse_nodes(&cli(port, &["cluster", "nodes"])?);
        let primary = nodes
            .iter()
            .find(|n| {
                n.primary && !n.failed && n.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot))
            })
            .with_context(|| format!("no primary serves slot {slot}"))?;
        // Each node's own line says its role at once; another node learns
        // it by gossip, a round or more later (a fresh cluster's first node
        // may still list a replica as a primary without slots).
        let replica = self
            .alive()
            .find(|n| {
                cli(n.port, &["cluster", "nodes"]).is_ok_and(|text| {
                    parse_nodes(&text)
                        .iter()
                        .any(|l| l.myself && !l.primary && l.primary_id == primary.id)
                })
            })
            .with_context(|| format!("the primary of slot {slot} has no replica"))?;
        Ok((primary.port, replica.port))
    }

    fn node(&mut self, port: u16) -> Result<&mut Node> {
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .with_context(|| format!("no node on :{port}"))
    }

    /// Steps 1 and 2: from now on the primary's writes reach no replica.
    /// Every write before this the replica has (its replication offset):
    /// the drill loses only writes made after it, whatever the replication
    /// lag was.
    pub fn isolate_replica(&mut self, primary: u16, replica: u16) -> Result<()> {
        // Every write the primary made so far, on the replica. (Not WAIT: it
        // waits for the writes of its own connection only, and a fresh
        // redis-cli has made none, so it answered at once: the fresh-clone
        // CI runs whose drill lost the product's warm-up.)
        let written = repl_offset(primary, "master_repl_offset")?;
        wait(Duration::from_secs(5), || {
            Ok(repl_offset(replica, "slave_repl_offset")? >= written)
        })
        .with_context(|| {
            format!("the replica :{replica} did not reach offset {written} of :{primary} within 5 s; the drill would lose more than it means to")
        })?;
        signal(self.node(replica)?.pid, "-STOP")?;
        cli(primary, &["client", "kill", "type", "replica"])?;
        Ok(())
    }

    /// Steps 4: the primary dies, the stale replica wakes and is promoted.
    /// `counter` is a hash field (key, field) counting acknowledged writes,
    /// e.g. a product's `stats` `admitted`: read on both sides, it tells how
    /// many the failover lost.
    pub fn fail_over(
        &mut self,
        primary: u16,
        replica: u16,
        slot: u16,
        counter: (&str, &str),
    ) -> Result<Drill> {
        // Writers wait (and time out) from here, so the read is the last word.
        cli(primary, &["client", "pause", "60000", "write"])?;
        let acknowledged = hash_number(primary, counter, false)?;
        let started = Instant::now();
        let p = self.node(primary)?;
        signal(p.pid, "-KILL")?;
        if let Some(child) = p.child.as_mut() {
            let _ = child.wait();
        }
        p.dead = true;
        signal(self.node(replica)?.pid, "-CONT")?;
        let mut kept = None;
        wait(Duration::from_secs(10), || {
            kept = hash_number(replica, counter, true).ok();
            Ok(kept.is_some())
        })
        .context("the resumed replica did not answer")?;
        wait(Duration::from_secs(30), || {
            Ok(self.primary_of(slot) == Some(replica))
        })
        .with_context(|| {
            let log = std::fs::read_to_string(self.dir.join(format!("node-{replica}.log")))
                .unwrap_or_default();
            let tail: Vec<&str> = log
                .lines()
                .filter(|l| !l.contains("SYNC") && !l.contains("Connecting to MASTER"))
                .rev()
                .take(15)
                .collect();
            format!(
                "the replica :{replica} was not promoted; its log ends:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            )
        })?;
        Ok(Drill {
            promoted_in: started.elapsed(),
            lost_writes: acknowledged - kept.unwrap_or(0),
        })
    }

    /// The port of the primary serving `slot`, as a healthy node sees it.
    fn primary_of(&self, slot: u16) -> Option<u16> {
        let healthy = self.alive().find(|n| {
            cli(n.port, &["cluster", "info"]).is_ok_and(|i| i.contains("cluster_state:ok"))
        })?;
        let nodes = parse_nodes(&cli(healthy.port, &["cluster", "nodes"]).ok()?);
        nodes
            .iter()
            .find(|n| {
                n.primary && !n.failed && n.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot))
            })
            .map(|n| n.port)
    }
}

/// A hash field as a number (0 when absent); on a replica, with READONLY.
/// A replication offset from `INFO replication` (`master_repl_offset` on a
/// primary, `slave_repl_offset` on a replica).
fn repl_offset(port: u16, field: &str) -> Result<i64> {
    let info = cli(port, &["info", "replication"])?;
    info.lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix(field)?
                .strip_prefix(':')?
                .parse()
                .ok()
        })
        .with_context(|| format!(":{port} reports no {field} in INFO replication"))
}

fn hash_number(port: u16, (key, field): (&str, &str), replica: bool) -> Result<i64> {
    let out = if replica {
        let mut child = redis_cli()
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("running redis-cli")?;
        if let Some(stdin) = child.stdin.as_mut() {
            use std::io::Write;
            writeln!(stdin, "READONLY\nHGET {key} {field}")?;
        }
        let out = child.wait_with_output()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut lines = text.lines();
        ensure!(
            out.status.success() && lines.next() == Some("OK"),
            "replica :{port} not answering yet"
        );
        lines.next().unwrap_or("").trim().to_owned()
    } else {
        cli(port, &["hget", key, field])?
    };
    if out.is_empty() {
        return Ok(0);
    }
    out.parse()
        .with_context(|| format!("{key} {field} on :{port} is {out:?}, not a number"))
}

fn wait(timeout: Duration, mut ready: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if ready()? {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        for n in &mut self.nodes {
            if let (false, Some(child)) = (n.dead, n.child.as_mut()) {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
