//! The offline init (tools::lambda_init) between a stand-in for LocalStack's
//! executor endpoint and a shell runtime speaking the Runtime API with curl.
//! The real bootstraps behind it run in the LocalStack sale (scripts/demo.sh).

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A runtime: echoes the payload with the request's headers, fails on
/// "fail", hangs on "hang", exits on "crash".
const RUNTIME: &str = r#"#!/bin/sh
api="http://$AWS_LAMBDA_RUNTIME_API/2018-06-01/runtime/invocation"
echo "runtime started"
while true; do
  curl -sS -D "$WORK/h" -o "$WORK/p" "$api/next" || exit 1
  header() { grep -i "^$1:" "$WORK/h" | cut -d' ' -f2 | tr -d '\r'; }
  id=$(header Lambda-Runtime-Aws-Request-Id)
  payload=$(cat "$WORK/p")
  echo "handling $id"
  case "$payload" in
    '"fail"') curl -sS -X POST -d '{"errorType":"Boom","errorMessage":"asked to"}' "$api/$id/error" ;;
    '"hang"') sleep 60 ;;
    '"crash"') exit 3 ;;
    '"late"') sleep 1.3; curl -sS -X POST -d '"late"' "$api/$id/response" ;;
    *) curl -sS -X POST -d "{\"payload\":$payload,\"deadline\":\"$(header Lambda-Runtime-Deadline-Ms)\",\"arn\":\"$(header Lambda-Runtime-Invoked-Function-Arn)\"}" "$api/$id/response" ;;
  esac
done
"#;

/// What the init posted to LocalStack, in order: (path, body).
type Calls = Arc<Mutex<Vec<(String, String)>>>;

struct Harness {
    init: Child,
    invoke: SocketAddr,
    calls: Calls,
    _work: tempdir::Dir,
}

mod tempdir {
    /// A directory removed on drop.
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

async fn localstack_stand_in(calls: Calls) -> SocketAddr {
    common::http_stub(move |path, body| {
        let body = String::from_utf8_lossy(&body).into_owned();
        calls.lock().unwrap().push((path, body));
        let mut resp = hyper::Response::new(Full::new(Bytes::new()));
        *resp.status_mut() = hyper::StatusCode::ACCEPTED;
        resp
    })
    .await
}

async fn start(runtime: &str, timeout_secs: u32) -> Harness {
    assert!(
        curl_present(),
        "the test runtime needs curl (apt install curl)"
    );
    let work = std::env::temp_dir().join(format!("flashsale-init-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&work).unwrap();
    let bootstrap = work.join("bootstrap");
    std::fs::write(&bootstrap, runtime).unwrap();
    std::fs::set_permissions(
        &bootstrap,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let calls = Calls::default();
    let localstack = localstack_stand_in(calls.clone()).await;
    let mut init = Command::new(env!("CARGO_BIN_EXE_localstack-init"))
        .env(
            "LOCALSTACK_RUNTIME_ENDPOINT",
            format!("http://{localstack}/_localstack_lambda/exec1"),
        )
        .env("LOCALSTACK_RUNTIME_ID", "env1")
        .env("AWS_LAMBDA_FUNCTION_TIMEOUT", timeout_secs.to_string())
        .env("FLASHSALE_INIT_BOOTSTRAP", &bootstrap)
        // Ports the init picks and says (no window for another process).
        .env("FLASHSALE_INIT_INVOKE_ADDR", "127.0.0.1:0")
        .env("FLASHSALE_INIT_RUNTIME_API_ADDR", "127.0.0.1:0")
        .env("WORK", &work)
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(init.stderr.take().unwrap()).lines();
    let first = stderr
        .next_line()
        .await
        .unwrap()
        .expect("the init said nothing");
    let invoke: SocketAddr = first
        .strip_prefix("[init] invocations on ")
        .and_then(|rest| rest.split(',').next())
        .unwrap_or_else(|| panic!("unexpected first line: {first}"))
        .parse()
        .unwrap();
    // The rest (the runtime's output too) in a file, for a failure's story.
    let log = work.join("init.log");
    tokio::spawn(async move {
        let mut text = String::new();
        while let Ok(Some(line)) = stderr.next_line().await {
            text.push_str(&line);
            text.push('\n');
            let _ = std::fs::write(&log, &text);
        }
    });
    Harness {
        init,
        invoke,
        calls,
        _work: tempdir::Dir(work),
    }
}

impl Harness {
    async fn invoke(&self, id: &str, payload: Value) {
        let body = json!({
            "invoke-id": id,
            "invoked-function-arn": "arn:aws:lambda:us-east-1:000000000000:function:f",
            "payload": payload.to_string(),
            "trace-id": "Root=1-0-0",
        });
        let client = flashsale_http();
        // The init may still be binding its port.
        for _ in 0..100 {
            let req = hyper::Request::post(format!("http://{}/invoke", self.invoke))
                .body(Full::new(Bytes::from(body.to_string())))
                .unwrap();
            if let Ok(resp) = client.request(req).await {
                assert_eq!(resp.status(), 200, "the init refused the invocation");
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the init never listened on {}", self.invoke);
    }

    /// Waits until the init posted to a path ending in `suffix`.
    async fn call(&self, suffix: &str) -> String {
        for _ in 0..400 {
            if let Some((_, body)) = self
                .calls
                .lock()
                .unwrap()
                .iter()
                .find(|(p, _)| p.ends_with(suffix))
            {
                return body.clone();
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!(
            "no call to …{suffix} in 10 s; calls: {:?}",
            self.calls.lock().unwrap()
        );
    }

    /// The body the init posted to …`suffix`, as JSON.
    async fn json(&self, suffix: &str) -> Value {
        serde_json::from_str(&self.call(suffix).await).unwrap()
    }

    fn paths(&self) -> Vec<String> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .map(|(p, _)| p.clone())
            .collect()
    }
}

fn flashsale_http() -> hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
> {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http()
}

fn curl_present() -> bool {
    Path::new("/usr/bin/curl").exists()
}

#[tokio::test]
async fn an_invocation_reaches_the_runtime_and_its_answer_goes_back_after_its_logs() {
    assert!(
        curl_present(),
        "the test runtime needs curl (apt install curl)"
    );
    let h = start(RUNTIME, 30).await;
    h.invoke("i1", json!({"n": 1})).await;
    let answer: Value = h.json("/invocations/i1/response").await;
    assert_eq!(answer["payload"], json!({"n": 1}));
    assert_eq!(
        answer["arn"],
        "arn:aws:lambda:us-east-1:000000000000:function:f"
    );
    let deadline: u128 = answer["deadline"].as_str().unwrap().parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    assert!(
        deadline > now + 25_000 && deadline <= now + 30_000,
        "deadline {deadline} is not ~30 s after {now}"
    );
    let logs: Value = h.json("/invocations/i1/logs").await;
    assert!(
        logs["logs"].as_str().unwrap().contains("handling i1"),
        "logs: {logs}"
    );
    assert_eq!(
        h.paths(),
        [
            "/_localstack_lambda/exec1/status/env1/ready",
            "/_localstack_lambda/exec1/invocations/i1/logs",
            "/_localstack_lambda/exec1/invocations/i1/response",
        ]
    );
}

#[tokio::test]
async fn a_function_error_goes_back_as_an_error() {
    let h = start(RUNTIME, 30).await;
    h.invoke("i1", json!("fail")).await;
    let error: Value = h.json("/invocations/i1/error").await;
    assert_eq!(
        error,
        json!({"errorType": "Boom", "errorMessage": "asked to"})
    );
}

#[tokio::test]
async fn past_its_timeout_an_invocation_fails_as_timed_out_and_the_runtime_restarts() {
    let h = start(RUNTIME, 1).await;
    h.invoke("i1", json!("hang")).await;
    let error: Value = h.json("/invocations/i1/error").await;
    assert_eq!(error["errorType"], "Sandbox.Timedout");
    assert_eq!(
        error["errorMessage"],
        "i1 Task timed out after 1.00 seconds"
    );
    h.invoke("i2", json!("after")).await;
    let answer: Value = h.json("/invocations/i2/response").await;
    assert_eq!(answer["payload"], "after");
    let logs: Value = h.json("/invocations/i2/logs").await;
    assert!(
        logs["logs"]
            .as_str()
            .unwrap()
            .starts_with("runtime started"),
        "a new runtime: {logs}"
    );
    assert_eq!(
        h.paths().iter().filter(|p| p.ends_with("/ready")).count(),
        1,
        "ready is said once per environment"
    );
}

#[tokio::test]
async fn a_runtime_that_exits_mid_invocation_fails_it_and_is_restarted() {
    let h = start(RUNTIME, 30).await;
    h.invoke("i1", json!("crash")).await;
    let error: Value = h.json("/invocations/i1/error").await;
    assert_eq!(error["errorType"], "Runtime.ExitError");
    assert!(
        error["errorMessage"]
            .as_str()
            .unwrap()
            .contains("exit status: 3"),
        "{error}"
    );
    h.invoke("i2", json!("after")).await;
    h.call("/invocations/i2/response").await;
}

#[tokio::test]
async fn a_runtime_that_exits_before_asking_for_work_fails_the_environment() {
    let mut h = start("#!/bin/sh\necho 'missing config' >&2\nexit 2\n", 30).await;
    let error: Value = h.json("/status/env1/error").await;
    assert_eq!(error["errorType"], "Runtime.ExitError");
    let status = tokio::time::timeout(Duration::from_secs(10), h.init.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(
        !status.success(),
        "the init must exit when its environment failed"
    );
}

#[tokio::test]
async fn an_answer_after_the_timeout_does_not_cost_the_next_invocation() {
    let h = start(RUNTIME, 1).await;
    h.invoke("i1", json!("late")).await;
    let error: Value = h.json("/invocations/i1/error").await;
    assert_eq!(error["errorType"], "Sandbox.Timedout");
    // LocalStack sends the next one as soon as the error is in.
    h.invoke("i2", json!("next")).await;
    let answer: Value = h.json("/invocations/i2/response").await;
    assert_eq!(answer["payload"], "next");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        !h.paths()
            .iter()
            .any(|p| p.ends_with("/invocations/i1/response")),
        "the late answer must not be reported: {:?}",
        h.paths()
    );
}
