//! A local CloudFront KeyValueStore: the data plane the edge publisher uses
//! (DescribeKeyValueStore, GetKey, ListKeys, PutKey, UpdateKeys, with the
//! AWS API's paths, ETags and `If-Match`), so the publisher runs unchanged
//! against it by endpoint override. A stale `If-Match` gets HTTP 412 with
//! the model's `ConflictException` type (the model gives that error 409;
//! the publisher takes either as stale).
//!
//! What the edge reads lags the API by a set propagation delay, as
//! CloudFront's copies do ("a few seconds"): `GET /_local/view` answers the
//! store as it was `delay` ago, which the local edge (edge/local/server.mjs)
//! polls. Tests also read every value a key ever held
//! ([`LocalKvs::history`]) and can lose the next write's reply
//! ([`LocalKvs::lose_next_reply`]: written, answered only after the
//! client gave up).

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use lambda_http::Body;
use serde_json::{Value, json};
use shared::http::{HttpResponse, json_response};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::runner::{Routes, serve};

/// The local store's ARN (any ARN is accepted in the path).
pub const LOCAL_ARN: &str = "arn:aws:cloudfront::000000000000:key-value-store/local-edge";

/// AWS's limits on what one store holds.
const MAX_KEY_BYTES: usize = 512;
const MAX_VALUE_BYTES: usize = 1024;
const MAX_PUTS: usize = 50;

#[derive(Default)]
struct State {
    items: BTreeMap<String, String>,
    version: u64,
    /// Writes not yet propagated to the view: (when, key, value).
    in_flight: VecDeque<(Instant, String, Option<String>)>,
    view: BTreeMap<String, String>,
    history: BTreeMap<String, Vec<String>>,
    /// The next write's answer is held back this long.
    lose_next_reply: Option<Duration>,
}

impl State {
    fn etag(&self) -> String {
        format!("LOCAL{:08}", self.version)
    }

    /// ItemCount and TotalSizeInBytes.
    fn counts(&self) -> (usize, usize) {
        let size = self.items.iter().map(|(k, v)| k.len() + v.len()).sum();
        (self.items.len(), size)
    }

    fn propagate(&mut self, delay: Duration) {
        let now = Instant::now();
        while let Some((at, _, _)) = self.in_flight.front() {
            if now.duration_since(*at) < delay {
                break;
            }
            if let Some((_, key, value)) = self.in_flight.pop_front() {
                match value {
                    Some(v) => self.view.insert(key, v),
                    None => self.view.remove(&key),
                };
            }
        }
    }

    fn write(&mut self, key: String, value: Option<String>) {
        match &value {
            Some(v) => {
                self.items.insert(key.clone(), v.clone());
                self.history.entry(key.clone()).or_default().push(v.clone());
            }
            None => {
                self.items.remove(&key);
            }
        }
        self.in_flight.push_back((Instant::now(), key, value));
    }
}

#[derive(Clone)]
pub struct LocalKvs {
    state: Arc<Mutex<State>>,
    delay: Duration,
}

impl LocalKvs {
    pub fn new(delay: Duration) -> Self {
        Self {
            state: Arc::default(),
            delay,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every value `key` was written, oldest first.
    pub fn history(&self, key: &str) -> Vec<String> {
        self.state().history.get(key).cloned().unwrap_or_default()
    }

    /// What the edge reads now (after the propagation delay).
    pub fn view(&self) -> BTreeMap<String, String> {
        let mut s = self.state();
        s.propagate(self.delay);
        s.view.clone()
    }

    /// The next write lands, and its answer comes only after `hold` (past
    /// the client's timeout: lost to it).
    pub fn lose_next_reply(&self, hold: Duration) {
        self.state().lose_next_reply = Some(hold);
    }

    /// Serves the API on `addr` until `shutdown` changes.
    pub async fn serve(
        self,
        addr: SocketAddr,
        shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the local KeyValueStore to {addr}"))?;
        let bound = listener.local_addr()?;
        let task = tokio::spawn(serve(listener, Arc::new(self), shutdown));
        Ok((bound, task))
    }

    fn answer(&self, req: &lambda_http::Request) -> Result<Answer, Box<HttpResponse>> {
        let path = req.uri().path();
        if path == "/_local/view" {
            return Ok(Answer::now(json_response(200, &self.view())));
        }
        // /key-value-stores/{KvsARN}[/keys[/{Key}]], the ARN one encoded segment.
        let segments: Vec<String> = path
            .trim_start_matches('/')
            .split('/')
            .map(|s| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8_lossy()
                    .into_owned()
            })
            .collect();
        let (arn, rest) = match segments.as_slice() {
            [root, arn, rest @ ..] if root == "key-value-stores" => (arn, rest),
            _ => return Err(error(404, "ResourceNotFoundException", "no such route")),
        };
        let mut s = self.state();
        let method = req.method().as_str();
        let if_match = req
            .headers()
            .get("if-match")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let check = |s: &State| match &if_match {
            None => Err(error(400, "ValidationException", "If-Match is required")),
            Some(tag) if *tag != s.etag() => Err(error(
                412,
                "ConflictException",
                &format!(
                    "the store is at {}, not {tag}: read its ETag again",
                    s.etag()
                ),
            )),
            Some(_) => Ok(()),
        };
        let body: Value = match req.body() {
            Body::Empty => Value::Null,
            b => serde_json::from_slice(b.as_ref())
                .map_err(|e| error(400, "ValidationException", &e.to_string()))?,
        };
        match (method, rest) {
            ("GET", []) => {
                let (n, size) = s.counts();
                Ok(Answer::now(with_etag(
                    json!({ "KvsARN": arn, "ItemCount": n, "TotalSizeInBytes": size,
                        "Created": 0, "LastModified": 0, "Status": "READY" }),
                    &s.etag(),
                )))
            }
            ("GET", [keys]) if keys == "keys" => {
                // Pages of MaxResults (1-50), NextToken the last key sent.
                let query: BTreeMap<String, String> =
                    form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
                        .into_owned()
                        .collect();
                let max = query
                    .get("MaxResults")
                    .and_then(|m| m.parse::<usize>().ok())
                    .unwrap_or(MAX_PUTS)
                    .clamp(1, MAX_PUTS);
                let after = query.get("NextToken");
                let page: Vec<(&String, &String)> = s
                    .items
                    .iter()
                    .filter(|(k, _)| after.is_none_or(|a| *k > a))
                    .take(max + 1)
                    .collect();
                let items: Vec<Value> = page
                    .iter()
                    .take(max)
                    .map(|(k, v)| json!({ "Key": k, "Value": v }))
                    .collect();
                let mut body = json!({ "Items": items });
                if page.len() > max {
                    body["NextToken"] = page[max - 1].0.clone().into();
                }
                Ok(Answer::now(json_response(200, &body)))
            }
            ("GET", [keys, key]) if keys == "keys" => match s.items.get(key) {
                Some(v) => {
                    let (n, size) = s.counts();
                    Ok(Answer::now(json_response(
                        200,
                        &json!({ "Key": key, "Value": v, "ItemCount": n, "TotalSizeInBytes": size }),
                    )))
                }
                None => Err(error(404, "ResourceNotFoundException", "no such key")),
            },
            ("PUT", [keys, key]) if keys == "keys" => {
                check(&s)?;
                let value = body["Value"].as_str().unwrap_or_default().to_owned();
                valid(key, &value)?;
                s.write(key.clone(), Some(value));
                Ok(Self::written(&mut s))
            }
            ("DELETE", [keys, key]) if keys == "keys" => {
                check(&s)?;
                s.write(key.clone(), None);
                Ok(Self::written(&mut s))
            }
            ("POST", [keys]) if keys == "keys" => {
                check(&s)?;
                let puts = body["Puts"].as_array().cloned().unwrap_or_default();
                let deletes = body["Deletes"].as_array().cloned().unwrap_or_default();
                if puts.len() + deletes.len() > MAX_PUTS {
                    return Err(error(
                        400,
                        "ValidationException",
                        "at most 50 keys per call",
                    ));
                }
                let mut writes = Vec::new();
                for p in &puts {
                    let (k, v) = (
                        p["Key"].as_str().unwrap_or_default(),
                        p["Value"].as_str().unwrap_or_default(),
                    );
                    valid(k, v)?;
                    writes.push((k.to_owned(), Some(v.to_owned())));
                }
                for d in &deletes {
                    writes.push((d["Key"].as_str().unwrap_or_default().to_owned(), None));
                }
                // All or nothing: checked above, applied here.
                for (k, v) in writes {
                    s.write(k, v);
                }
                Ok(Self::written(&mut s))
            }
            _ => Err(error(404, "ResourceNotFoundException", "no such route")),
        }
    }

    fn written(s: &mut State) -> Answer {
        s.version += 1;
        let (n, size) = s.counts();
        let resp = with_etag(
            json!({ "ItemCount": n, "TotalSizeInBytes": size }),
            &s.etag(),
        );
        Answer {
            resp,
            hold: s.lose_next_reply.take(),
        }
    }
}

/// A response, and how long to hold it back (a lost reply).
struct Answer {
    resp: HttpResponse,
    hold: Option<Duration>,
}

impl Answer {
    fn now(resp: HttpResponse) -> Self {
        Self { resp, hold: None }
    }
}

impl Routes for LocalKvs {
    async fn route(&self, req: lambda_http::Request) -> HttpResponse {
        match self.answer(&req) {
            Ok(Answer { resp, hold }) => {
                if let Some(hold) = hold {
                    tokio::time::sleep(hold).await;
                }
                resp
            }
            Err(resp) => *resp,
        }
    }
}

fn valid(key: &str, value: &str) -> Result<(), Box<HttpResponse>> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES || value.len() > MAX_VALUE_BYTES {
        return Err(error(
            400,
            "ValidationException",
            "keys are 1 to 512 bytes, values at most 1 KB",
        ));
    }
    Ok(())
}

fn with_etag(body: Value, etag: &str) -> HttpResponse {
    let mut resp = json_response(200, &body);
    if let Ok(v) = etag.parse() {
        resp.headers_mut().insert("etag", v);
    }
    resp
}

fn error(status: u16, kind: &str, message: &str) -> Box<HttpResponse> {
    let mut resp = json_response(status, &json!({ "__type": kind, "Message": message }));
    if let Ok(v) = kind.parse() {
        resp.headers_mut().insert("x-amzn-errortype", v);
    }
    Box::new(resp)
}
