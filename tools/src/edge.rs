//! The local edge (issue 32): CloudFront's viewer-request step in front of a
//! local origin. edge/local/server.mjs runs the very edge function the
//! template deploys per request, reading the local KeyValueStore
//! ([`crate::kvs`]) the publisher writes; this starts it (node) and stops it
//! by its PID.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The local edge's script, in this repository.
pub fn script() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../edge/local/server.mjs"
    ))
}

pub struct LocalEdge {
    pub addr: SocketAddr,
    child: Child,
}

impl LocalEdge {
    /// Starts the edge on `listen` (port 0: a free one) in front of `origin`,
    /// reading the store served at `kvs`.
    pub async fn start(
        listen: SocketAddr,
        origin: SocketAddr,
        kvs: SocketAddr,
    ) -> anyhow::Result<Self> {
        Self::start_throttled(listen, origin, kvs, None).await
    }

    /// The same, with the origin behind API Gateway's throttle: `(rate,
    /// burst)` requests a second reach it, the others get its 429.
    pub async fn start_throttled(
        listen: SocketAddr,
        origin: SocketAddr,
        kvs: SocketAddr,
        throttle: Option<(f64, u32)>,
    ) -> anyhow::Result<Self> {
        let mut command = Command::new("node");
        command
            .arg("--experimental-vm-modules")
            .arg("--no-warnings")
            .arg(script())
            .args(["--listen", &listen.to_string()])
            .args(["--origin", &format!("http://{origin}")])
            .args(["--kvs", &format!("http://{kvs}")]);
        if let Some((rate, burst)) = throttle {
            command
                .args(["--origin-rate", &rate.to_string()])
                .args(["--origin-burst", &burst.to_string()]);
        }
        let mut child = command
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting the local edge: is node installed (make setup)?")?;
        let stdout = child.stdout.take().context("the local edge's stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(std::time::Duration::from_secs(20), lines.next_line())
            .await
            .context("the local edge did not start within 20 s")??;
        let Some(url) = line
            .as_deref()
            .and_then(|l| l.strip_prefix("edge listening on http://"))
        else {
            bail!("the local edge did not start: it printed {line:?} (see its stderr above)");
        };
        let addr = url
            .parse()
            .with_context(|| format!("the local edge's address {url:?}"))?;
        // Keep draining its stdout so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Self { addr, child })
    }

    /// Stops it (SIGKILL to its PID) and waits for it.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}
