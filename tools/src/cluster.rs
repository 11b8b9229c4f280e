//! A real Redis Cluster on loopback (3 primaries, 3 replicas), started from
//! `redis-server` on free ports and stopped by PID, and the failover drill
//! that makes it forget acknowledged writes:
//!
//! 1. freeze the replica of the product's primary (SIGSTOP);
//! 2. drop the primary's replication link (`CLIENT KILL TYPE replica`),
//!    otherwise the kernel still delivers the stream when the replica wakes;
//! 3. let writes land on the primary alone (acknowledged to clients);
//! 4. kill -9 the primary, resume the replica: the cluster promotes it
//!    (~2.4 s with `cluster-node-timeout 1000`) without those writes.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

const NODES: usize = 6;

pub struct Node {
    pub port: u16,
    child: Child,
    /// Killed by the drill: not stopped again.
    dead: bool,
}

impl Node {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

pub struct RedisCluster {
    pub nodes: Vec<Node>,
    dir: PathBuf,
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// `redis-cli -p <port> <args…>`, its stdout.
pub fn cli(port: u16, args: &[&str]) -> Result<String> {
    let out = Command::new("redis-cli")
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
                failed: flags.contains("fail") && !flags.contains("pfail"),
                slots,
            })
        })
        .collect()
}

impl RedisCluster {
    /// Starts six nodes and joins them: three primaries, one replica each.
    pub fn start() -> Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "flashsale-cluster-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir)?;
        let mut cluster = Self {
            nodes: Vec::new(),
            dir,
        };
        for _ in 0..NODES {
            let port = free_port()?;
            let child = Command::new("redis-server")
                .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
                .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "1000"])
                .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(&cluster.dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting redis-server (apt install redis-server)")?;
            cluster.nodes.push(Node {
                port,
                child,
                dead: false,
            });
        }
        for n in &cluster.nodes {
            wait(Duration::from_secs(10), || {
                Ok(cli(n.port, &["ping"]).is_ok_and(|r| r == "PONG"))
            })
            .with_context(|| format!("redis-server on :{} did not answer", n.port))?;
        }
        let mut create = Command::new("redis-cli");
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

    /// Every live node says `cluster_state:ok` and all 16384 slots are served.
    pub fn wait_healthy(&self, timeout: Duration) -> Result<()> {
        wait(timeout, || {
            Ok(self.alive().all(|n| {
                cli(n.port, &["cluster", "info"]).is_ok_and(|i| {
                    i.contains("cluster_state:ok") && i.contains("cluster_slots_ok:16384")
                })
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
        let replica = nodes
            .iter()
            .find(|n| !n.primary && n.primary_id == primary.id)
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
    pub fn isolate_replica(&mut self, primary: u16, replica: u16) -> Result<()> {
        signal(self.node(replica)?.pid(), "-STOP")?;
        cli(primary, &["client", "kill", "type", "replica"])?;
        Ok(())
    }

    /// Step 4: the primary dies, the stale replica wakes and is promoted.
    /// Returns how long the slot had no primary.
    pub fn fail_over(&mut self, primary: u16, replica: u16, slot: u16) -> Result<Duration> {
        let started = Instant::now();
        let p = self.node(primary)?;
        p.child.kill().context("killing the primary")?;
        let _ = p.child.wait();
        p.dead = true;
        signal(self.node(replica)?.pid(), "-CONT")?;
        wait(Duration::from_secs(30), || {
            Ok(self.primary_of(slot) == Some(replica))
        })
        .context("the replica was not promoted")?;
        Ok(started.elapsed())
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
        for n in &mut self.nodes {
            if !n.dead {
                // A frozen node must be woken to die by SIGKILL's sibling.
                let _ = signal(n.child.id(), "-CONT");
                let _ = n.child.kill();
                let _ = n.child.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
