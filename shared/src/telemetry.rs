//! JSON logs through `tracing`, level from `RUST_LOG` (default `info`).

use tracing_subscriber::EnvFilter;

pub fn init() {
    init_to(std::io::stdout);
}

/// The same logs into `writer` (benches measure their cost into /dev/null).
pub fn init_to<W>(writer: W)
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // `try_init`: a second call (tests, the local runner wiring several
    // handlers) keeps the first subscriber instead of panicking.
    let _ = tracing_subscriber::fmt()
        .with_writer(writer)
        .json()
        .with_env_filter(filter)
        .with_current_span(true)
        .with_span_list(false)
        .with_target(false)
        .without_time()
        .try_init();
}

/// A W3C `traceparent` continuing the caller's trace when it sent a valid
/// one, else starting a new trace. It travels with the order through SQS.
pub fn traceparent(incoming: Option<&str>) -> String {
    let span = &uuid::Uuid::new_v4().simple().to_string()[..16];
    let trace = incoming
        .and_then(|tp| {
            let parts: Vec<&str> = tp.split('-').collect();
            let valid = parts.len() == 4
                && parts[1].len() == 32
                && parts[1].bytes().all(|b| b.is_ascii_hexdigit())
                && parts[1] != "0".repeat(32);
            valid.then(|| parts[1].to_ascii_lowercase())
        })
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    format!("00-{trace}-{span}-01")
}

/// The trace id of a `traceparent`, for log lines.
pub fn trace_id(traceparent: &str) -> &str {
    traceparent.split('-').nth(1).unwrap_or("")
}

/// One in `every` events is logged: a sale is mostly refusals, and a log
/// line per refusal costs CPU here and ingestion in CloudWatch, while the
/// metrics count every one.
pub struct Sampler {
    every: std::sync::atomic::AtomicU64,
    seen: std::sync::atomic::AtomicU64,
}

impl Sampler {
    pub const fn new(every: u64) -> Self {
        Self {
            every: std::sync::atomic::AtomicU64::new(every),
            seen: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Whether this event is the one in `every` to log (the first is).
    pub fn hit(&self) -> bool {
        let n = self.seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let every = self.every();
        every <= 1 || n.is_multiple_of(every)
    }

    pub fn every(&self) -> u64 {
        self.every.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// From configuration at init (1 logs every event).
    pub fn set_every(&self, every: u64) {
        self.every
            .store(every.max(1), std::sync::atomic::Ordering::Relaxed);
    }
}

/// Records how long one handler invocation took (`flashsale_handler_seconds`).
pub fn record_latency(handler: &'static str, started: std::time::Instant) {
    metrics::histogram!("flashsale_handler_seconds", "handler" => handler)
        .record(started.elapsed().as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sampler_logs_the_first_of_every_n() {
        let s = Sampler::new(3);
        let hits: Vec<bool> = (0..7).map(|_| s.hit()).collect();
        assert_eq!(hits, [true, false, false, true, false, false, true]);
        let all = Sampler::new(1);
        assert!((0..3).all(|_| all.hit()));
    }

    #[test]
    fn traceparent_continues_a_valid_trace_and_replaces_garbage() {
        let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let tp = traceparent(Some(incoming));
        assert_eq!(trace_id(&tp), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(tp, incoming, "a new span id is minted");
        let fresh = traceparent(Some("garbage"));
        assert_eq!(trace_id(&fresh).len(), 32);
        assert_eq!(fresh.split('-').count(), 4);
    }
}
