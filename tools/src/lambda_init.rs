//! The init LocalStack's Lambda runs as PID 1 of each function container,
//! for machines where LocalStack cannot download its own (offline). It
//! speaks both sides the way LocalStack's own init does:
//!
//! - LocalStack → init: `POST /invoke` on :9563 with `invoke-id`,
//!   `invoked-function-arn`, `payload` and `trace-id`, answered at once;
//! - init → LocalStack (`$LOCALSTACK_RUNTIME_ENDPOINT`): `status/<id>/ready`
//!   when the runtime first asks for work, `status/<id>/error` when it
//!   fails before that, and per invocation `invocations/<id>/logs` then
//!   `invocations/<id>/response` or `/error`;
//! - init ↔ the function: the Lambda Runtime API, served to
//!   `/var/task/bootstrap` on `AWS_LAMBDA_RUNTIME_API`.
//!
//! LocalStack does not enforce a function's timeout itself (its own init
//! does), so this one does: past `AWS_LAMBDA_FUNCTION_TIMEOUT` it reports
//! `Sandbox.Timedout` and restarts the runtime, as Lambda does. A runtime
//! that exits during an invocation fails it with `Runtime.ExitError` and is
//! restarted. The function runs as the container's user: LocalStack's
//! `LOCALSTACK_USER` (a sandbox user) is not applied.

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Deserialize;
use serde_json::json;
use std::io::Write;
use tokio::net::TcpListener;
use tokio::net::unix::pipe;
use tokio::process::Command;
use tokio::sync::mpsc;

/// What the container's environment says, read once at start.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `$LOCALSTACK_RUNTIME_ENDPOINT`: where status and results go.
    pub runtime_endpoint: String,
    /// `$LOCALSTACK_RUNTIME_ID`: this execution environment.
    pub runtime_id: String,
    pub timeout: Duration,
    pub bootstrap: PathBuf,
    /// Where LocalStack sends invocations (0.0.0.0:9563 in a container).
    pub invoke_addr: SocketAddr,
    /// Where the function finds the Runtime API (127.0.0.1:9001).
    pub runtime_api_addr: SocketAddr,
}

/// One path LocalStack asks the init to chmod (`LOCALSTACK_CHMOD_PATHS`).
#[derive(Debug, Deserialize)]
struct ChmodPath {
    path: PathBuf,
    mode: String,
}

impl Settings {
    /// From the variables LocalStack sets on the container; the two
    /// addresses and the bootstrap may be overridden (tests run the init on
    /// a host, beside other processes).
    pub fn from_env() -> Result<Self> {
        let var = |name: &str| {
            std::env::var(name).with_context(|| {
                format!("{name} is not set: this init runs inside a LocalStack Lambda container, which sets it")
            })
        };
        let timeout_secs: u64 = var("AWS_LAMBDA_FUNCTION_TIMEOUT")?
            .parse()
            .context("AWS_LAMBDA_FUNCTION_TIMEOUT must be whole seconds")?;
        let addr = |name: &str, default: &str| -> Result<SocketAddr> {
            let raw = std::env::var(name).unwrap_or_else(|_| default.to_owned());
            raw.parse()
                .with_context(|| format!("{name}={raw} is not an address like 127.0.0.1:9001"))
        };
        let bootstrap = match std::env::var_os("FLASHSALE_INIT_BOOTSTRAP") {
            Some(path) => PathBuf::from(path),
            None => find_bootstrap()?,
        };
        Ok(Self {
            runtime_endpoint: var("LOCALSTACK_RUNTIME_ENDPOINT")?
                .trim_end_matches('/')
                .to_owned(),
            runtime_id: var("LOCALSTACK_RUNTIME_ID")?,
            timeout: Duration::from_secs(timeout_secs),
            bootstrap,
            invoke_addr: addr("FLASHSALE_INIT_INVOKE_ADDR", "0.0.0.0:9563")?,
            runtime_api_addr: addr("FLASHSALE_INIT_RUNTIME_API_ADDR", "127.0.0.1:9001")?,
        })
    }
}

/// Where Lambda looks for a custom runtime's bootstrap, in its order.
fn find_bootstrap() -> Result<PathBuf> {
    let task_root = std::env::var("LAMBDA_TASK_ROOT").unwrap_or_else(|_| "/var/task".into());
    let candidates = [
        Path::new(&task_root).join("bootstrap"),
        PathBuf::from("/opt/bootstrap"),
        PathBuf::from("/var/runtime/bootstrap"),
    ];
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .with_context(|| {
            format!("no bootstrap in {candidates:?}: a provided runtime's zip must hold an executable named bootstrap at its root")
        })
}

/// LocalStack's `LOCALSTACK_CHMOD_PATHS` (e.g. /tmp to 0700).
pub fn apply_chmod_paths() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let Ok(raw) = std::env::var("LOCALSTACK_CHMOD_PATHS") else {
        return Ok(());
    };
    let paths: Vec<ChmodPath> = serde_json::from_str(&raw)
        .context("LOCALSTACK_CHMOD_PATHS is not a JSON list of {path, mode}")?;
    for p in paths {
        let mode = u32::from_str_radix(&p.mode, 8)
            .with_context(|| format!("mode {} of {} is not octal", p.mode, p.path.display()))?;
        if p.path.exists() {
            std::fs::set_permissions(&p.path, std::fs::Permissions::from_mode(mode))
                .with_context(|| format!("chmod {:o} {}", mode, p.path.display()))?;
        }
    }
    Ok(())
}

/// An invocation as LocalStack sends it.
#[derive(Debug, Clone, Deserialize)]
struct Invocation {
    #[serde(rename = "invoke-id")]
    id: String,
    #[serde(rename = "invoked-function-arn")]
    arn: String,
    payload: String,
    #[serde(rename = "trace-id", default)]
    trace_id: Option<String>,
}

struct Init {
    settings: Settings,
    http: Client<HttpConnector, Full<Bytes>>,
    /// LocalStack sends one invocation at a time per environment; the queue
    /// only bridges `/invoke` to the runtime's `/next`. An async lock: a
    /// `/next` whose runtime died releases it with its dropped future.
    queue: tokio::sync::Mutex<mpsc::UnboundedReceiver<(Invocation, u128)>>,
    sender: mpsc::UnboundedSender<(Invocation, u128)>,
    /// Invocations not yet answered (LocalStack waits on each).
    open: Mutex<HashSet<String>>,
    /// The one the runtime holds.
    current: Mutex<Option<String>>,
    ready_sent: Mutex<bool>,
    /// The runtime's output (stdout and stderr, one pipe) not yet sent.
    output: Mutex<Output>,
    /// Invocations past their deadline, for the supervisor: it kills the
    /// runtime if it still holds one, then reports it, then restarts it (in
    /// that order, so LocalStack's next invocation meets a fresh runtime).
    timeouts: mpsc::UnboundedSender<String>,
    /// The runtime's pid, for the reaper: that one is tokio's to wait for.
    runtime_pid: std::sync::atomic::AtomicU32,
    /// The runtime reported its own init error (not to be reported twice).
    init_error_sent: std::sync::atomic::AtomicBool,
}

/// Runs until SIGTERM (LocalStack stopping the container).
pub async fn run(settings: Settings) -> Result<()> {
    let invoke = TcpListener::bind(settings.invoke_addr)
        .await
        .with_context(|| format!("cannot listen for invocations on {}", settings.invoke_addr))?;
    let runtime_api = TcpListener::bind(settings.runtime_api_addr)
        .await
        .with_context(|| {
            format!(
                "cannot serve the Runtime API on {}",
                settings.runtime_api_addr
            )
        })?;
    let (sender, receiver) = mpsc::unbounded_channel();
    let (timeouts, timed_out) = mpsc::unbounded_channel();
    // Port 0 (tests) becomes the port the runtime must be told.
    let mut settings = settings;
    settings.invoke_addr = invoke.local_addr()?;
    settings.runtime_api_addr = runtime_api.local_addr()?;
    eprintln!(
        "[init] invocations on {}, Runtime API on {}",
        settings.invoke_addr, settings.runtime_api_addr
    );
    let init = Arc::new(Init {
        settings,
        http: Client::builder(TokioExecutor::new()).build_http(),
        queue: tokio::sync::Mutex::new(receiver),
        sender,
        open: Mutex::new(HashSet::new()),
        current: Mutex::new(None),
        ready_sent: Mutex::new(false),
        output: Mutex::new(Output::default()),
        timeouts,
        runtime_pid: Default::default(),
        init_error_sent: Default::default(),
    });
    tokio::spawn(serve(invoke, init.clone()));
    tokio::spawn(serve(runtime_api, init.clone()));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot watch SIGTERM")?;
    if std::process::id() == 1 {
        tokio::spawn(reap_orphans(init.clone()));
    }
    tokio::select! {
        result = supervise(init, timed_out) => result,
        _ = term.recv() => Ok(()),
    }
}

/// Keeps one runtime process running; `kill_on_drop` ends it with us.
async fn supervise(init: Arc<Init>, mut timed_out: mpsc::UnboundedReceiver<String>) -> Result<()> {
    loop {
        let (reader, writer) =
            std::io::pipe().context("cannot make a pipe for the runtime's output")?;
        let pipe = Arc::new(
            pipe::Receiver::from_owned_fd(reader.into())
                .context("cannot watch the runtime's output pipe")?,
        );
        lock(&init.output).pipe = Some(pipe.clone());
        let mut child = Command::new(&init.settings.bootstrap)
            .env(
                "AWS_LAMBDA_RUNTIME_API",
                init.settings.runtime_api_addr.to_string(),
            )
            .stdin(Stdio::null())
            .stdout(writer.try_clone().context("cannot share the output pipe")?)
            .stderr(writer)
            // Its own group, so a restart also ends what it started (a
            // child left holding its output open would hold us too).
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", init.settings.bootstrap.display()))?;
        if let Some(pid) = child.id() {
            init.runtime_pid
                .store(pid, std::sync::atomic::Ordering::SeqCst);
        }
        let capture = tokio::spawn(capture(pipe, init.clone()));
        let exited = loop {
            tokio::select! {
                status = child.wait() => break Ok(status),
                Some(id) = timed_out.recv() => {
                    // One it answered meanwhile is not killed for.
                    if init.is_current(&id) {
                        break Err(id);
                    }
                }
            }
        };
        if let Some(pid) = child.id() {
            // SAFETY: kill(2) on the group we made; no memory is involved.
            unsafe { libc::kill(-(pid as libc::pid_t), libc::SIGKILL) };
        }
        let _ = child.wait().await;
        // The output up to the exit belongs to the invocation it ends;
        // bounded, for a grandchild that left the group and kept the pipe.
        let abort = capture.abort_handle();
        if tokio::time::timeout(Duration::from_secs(1), capture)
            .await
            .is_err()
        {
            abort.abort();
        }
        let status = match exited {
            Err(id) => {
                if init.take(&id) {
                    init.timed_out(&id).await;
                }
                continue;
            }
            Ok(status) => status,
        };
        let what = match status {
            Ok(status) => format!("Runtime exited with error: {status}"),
            // The reaper can win a race for a runtime that died at once.
            Err(e) => format!("Runtime exited (its status was lost: {e})"),
        };
        if !*lock(&init.ready_sent) {
            // It never asked for work: the environment failed to start
            // (LocalStack refuses a second report of it).
            if !init
                .init_error_sent
                .load(std::sync::atomic::Ordering::SeqCst)
            {
                init.post(
                    &format!("status/{}/error", init.settings.runtime_id),
                    error_body("Runtime.ExitError", &what),
                )
                .await;
            }
            bail!(
                "{} {what} before asking for an invocation",
                init.settings.bootstrap.display()
            );
        }
        let current = lock(&init.current).clone();
        if let Some(id) = current
            && init.take(&id)
        {
            let message = format!("RequestId: {id} Error: {what}");
            init.finish(&id, "error", error_body("Runtime.ExitError", &message))
                .await;
        }
    }
}

/// The runtime's output: what was read, and the pipe it comes from.
#[derive(Default)]
struct Output {
    text: String,
    pipe: Option<Arc<pipe::Receiver>>,
}

impl Output {
    /// Reads what the pipe holds now, without waiting; true at its end.
    /// Copied to our stderr (the container's log) and kept for the logs
    /// callback, up to 1 MiB per invocation (a runaway logger must not grow
    /// the init).
    fn drain(&mut self, pipe: &pipe::Receiver) -> bool {
        let mut buf = [0u8; 8192];
        loop {
            match pipe.try_read(&mut buf) {
                Ok(0) => return true,
                Ok(n) => {
                    let _ = std::io::stderr().write_all(&buf[..n]);
                    if self.text.len() < 1 << 20 {
                        self.text.push_str(&String::from_utf8_lossy(&buf[..n]));
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return e.kind() != std::io::ErrorKind::WouldBlock,
            }
        }
    }

    /// Everything the runtime wrote before now. A runtime writes its logs
    /// before it posts its answer, so reading the pipe here (not waiting
    /// for the capture task to get to it) puts them all in this invocation.
    fn take(&mut self) -> String {
        if let Some(pipe) = self.pipe.clone() {
            self.drain(&pipe);
        }
        std::mem::take(&mut self.text)
    }
}

/// Reads the runtime's output as it comes, until the pipe's end.
async fn capture(pipe: Arc<pipe::Receiver>, init: Arc<Init>) {
    // try_read (in drain) clears the readiness when the pipe is empty.
    while pipe.readable().await.is_ok() {
        if lock(&init.output).drain(&pipe) {
            return;
        }
    }
}

/// As PID 1 the init inherits every orphan of the container (a restarted
/// runtime's children, killed with its group); it reaps them, leaving the
/// runtime itself to tokio. WNOWAIT peeks without reaping.
async fn reap_orphans(init: Arc<Init>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut children) = signal(SignalKind::child()) else {
        return;
    };
    while children.recv().await.is_some() {
        loop {
            // SAFETY: waitid/waitpid on any child; siginfo is plain data.
            let pid = unsafe {
                let mut info: libc::siginfo_t = std::mem::zeroed();
                let flags = libc::WEXITED | libc::WNOHANG | libc::WNOWAIT;
                if libc::waitid(libc::P_ALL, 0, &mut info, flags) != 0 {
                    break;
                }
                info.si_pid()
            };
            let runtime = init.runtime_pid.load(std::sync::atomic::Ordering::SeqCst);
            // The runtime first in line waits for tokio; orphans behind it
            // are reaped at the next SIGCHLD.
            if pid <= 0 || pid as u32 == runtime {
                break;
            }
            // SAFETY: reaps the orphan waitid named.
            unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
        }
    }
}

fn error_body(error_type: &str, message: &str) -> Bytes {
    Bytes::from(json!({ "errorType": error_type, "errorMessage": message }).to_string())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these cannot leave it half-written.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default()
}

impl Init {
    /// A callback to LocalStack. Failures are logged, not retried: LocalStack
    /// gone means the container is about to be stopped.
    async fn post(&self, path: &str, body: Bytes) {
        let url = format!("{}/{path}", self.settings.runtime_endpoint);
        let req = Request::post(&url)
            .header("content-type", "application/json")
            .body(Full::new(body));
        let sent = match req {
            Ok(req) => self
                .http
                .request(req)
                .await
                .map(|r| r.status())
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match sent {
            Ok(status) if status.is_success() => {}
            Ok(status) => eprintln!("[init] POST {url} answered {status}"),
            Err(e) => eprintln!("[init] POST {url} failed: {e}"),
        }
    }

    /// Ends an invocation: its logs first (LocalStack attaches them to the
    /// result it is about to receive), then the result.
    async fn finish(&self, id: &str, outcome: &str, body: Bytes) {
        let logs = lock(&self.output).take();
        self.post(
            &format!("invocations/{id}/logs"),
            Bytes::from(json!({ "logs": logs }).to_string()),
        )
        .await;
        self.post(&format!("invocations/{id}/{outcome}"), body)
            .await;
    }

    async fn timed_out(&self, id: &str) {
        let message = format!(
            "{id} Task timed out after {:.2} seconds",
            self.settings.timeout.as_secs_f64()
        );
        self.finish(id, "error", error_body("Sandbox.Timedout", &message))
            .await;
    }

    /// Closes invocation `id`; false when it was closed already (a late
    /// answer after its timeout must not be reported twice).
    fn take(&self, id: &str) -> bool {
        let mut current = lock(&self.current);
        if current.as_deref() == Some(id) {
            *current = None;
        }
        lock(&self.open).remove(id)
    }

    fn is_current(&self, id: &str) -> bool {
        lock(&self.current).as_deref() == Some(id)
    }

    async fn invoke(self: &Arc<Self>, body: Bytes) -> Response<Full<Bytes>> {
        let invocation: Invocation = match serde_json::from_slice(&body) {
            Ok(i) => i,
            Err(e) => return text(StatusCode::BAD_REQUEST, format!("not an invocation: {e}")),
        };
        let deadline_ms = now_ms() + self.settings.timeout.as_millis();
        let id = invocation.id.clone();
        lock(&self.open).insert(id.clone());
        if self.sender.send((invocation, deadline_ms)).is_err() {
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                "the init is stopping".into(),
            );
        }
        let init = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(init.settings.timeout).await;
            if init.is_current(&id) {
                // The supervisor kills the runtime first, then reports.
                let _ = init.timeouts.send(id);
            } else if init.take(&id) {
                // Still queued (the runtime never asked again).
                init.timed_out(&id).await;
            }
        });
        text(StatusCode::OK, String::new())
    }

    /// `GET /next`: the runtime asks for work (the first time, it is ready).
    async fn next(&self) -> Response<Full<Bytes>> {
        let first = {
            let mut ready = lock(&self.ready_sent);
            !std::mem::replace(&mut *ready, true)
        };
        if first {
            self.post(
                &format!("status/{}/ready", self.settings.runtime_id),
                Bytes::new(),
            )
            .await;
        }
        let mut receiver = self.queue.lock().await;
        let received = loop {
            match receiver.recv().await {
                // One that timed out while queued was answered already.
                Some((inv, deadline)) if lock(&self.open).contains(&inv.id) => {
                    break Some((inv, deadline));
                }
                Some(_) => continue,
                None => break None,
            }
        };
        drop(receiver);
        let Some((inv, deadline_ms)) = received else {
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                "the init is stopping".into(),
            );
        };
        *lock(&self.current) = Some(inv.id.clone());
        let mut resp = Response::builder()
            .status(StatusCode::OK)
            .header("Lambda-Runtime-Aws-Request-Id", &inv.id)
            .header("Lambda-Runtime-Deadline-Ms", deadline_ms.to_string())
            .header("Lambda-Runtime-Invoked-Function-Arn", &inv.arn)
            .header("content-type", "application/json");
        if let Some(trace) = &inv.trace_id {
            resp = resp.header("Lambda-Runtime-Trace-Id", trace);
        }
        resp.body(Full::new(Bytes::from(inv.payload)))
            .unwrap_or_else(|e| text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
    }

    async fn route(self: Arc<Self>, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let (parts, body) = req.into_parts();
        let body = match body.collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => return text(StatusCode::BAD_REQUEST, format!("unreadable body: {e}")),
        };
        let path = parts.uri.path();
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        match (&parts.method, segments.as_slice()) {
            (&Method::POST, ["invoke"]) => self.invoke(body).await,
            (&Method::GET, ["2018-06-01", "runtime", "invocation", "next"]) => self.next().await,
            (
                &Method::POST,
                [
                    "2018-06-01",
                    "runtime",
                    "invocation",
                    id,
                    outcome @ ("response" | "error"),
                ],
            ) => {
                if !(self.is_current(id) && self.take(id)) {
                    return text(
                        StatusCode::BAD_REQUEST,
                        json!({"errorType": "InvalidRequestID", "errorMessage": format!("{id} is not the invocation in progress (it may have timed out)")}).to_string(),
                    );
                }
                self.finish(id, outcome, body).await;
                text(StatusCode::ACCEPTED, r#"{"status":"OK"}"#.into())
            }
            (&Method::POST, ["2018-06-01", "runtime", "init", "error"]) => {
                self.init_error_sent
                    .store(true, std::sync::atomic::Ordering::SeqCst);
                self.post(&format!("status/{}/error", self.settings.runtime_id), body)
                    .await;
                text(StatusCode::ACCEPTED, r#"{"status":"OK"}"#.into())
            }
            _ => text(
                StatusCode::NOT_FOUND,
                format!(
                    "{} {path} is not part of the Runtime API or the invoke endpoint",
                    parts.method
                ),
            ),
        }
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp
}

async fn serve(listener: TcpListener, init: Arc<Init>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of descriptors, say: wait rather than spin.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let init = init.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let init = init.clone();
                async move { Ok::<_, Infallible>(init.route(req).await) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
