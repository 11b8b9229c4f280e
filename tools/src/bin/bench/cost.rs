//! Figure 9: the cost line, from what the other figures measured.

use super::*;

/// What the other figures measured that the cost line needs.
#[derive(Default)]
pub(super) struct Measured {
    /// deduct's handler time per buy (figure 2, p50), ms.
    pub(super) deduct_ms: Option<f64>,
    /// The consumer's time per batch of 10 (figure 4, concurrent median), ms.
    pub(super) consumer_batch_ms: Option<f64>,
}

/// Figure 9: dollars per million buy attempts and per million placed
/// orders at list prices, from the measured durations and the calls each
/// request makes.
pub(super) fn cost(measured: &Measured) -> Vec<Row> {
    // AWS list prices, us-east-1, arm64, as published in 2025 (check the
    // pricing pages before relying on them).
    const API_PER_M: f64 = 1.00; // HTTP API requests (first 300 M a month)
    const LAMBDA_REQ_PER_M: f64 = 0.20;
    const LAMBDA_GB_S: f64 = 0.000_013_333_4; // arm64
    const SQS_PER_M: f64 = 0.40; // standard queue requests
    const DDB_WRU_PER_M: f64 = 0.625; // on-demand write request units
    const LOGS_PER_GB: f64 = 0.50; // CloudWatch Logs ingestion
    const MEMORY_GB: f64 = 0.25; // MemorySize 256 in template.yaml
    // Bytes a log line, or an EMF metrics line per invocation, takes.
    const LOG_LINE: f64 = 400.0;
    let lambda =
        |ms: f64| LAMBDA_REQ_PER_M + ms.ceil().max(1.0) / 1000.0 * MEMORY_GB * LAMBDA_GB_S * 1e6;
    let logs = |lines_per_call: f64| lines_per_call * LOG_LINE / 1e9 * LOGS_PER_GB * 1e6;
    let deduct_ms = measured.deduct_ms.unwrap_or(1.0);
    // A refused attempt: the API, one deduct invocation, its EMF line and
    // (sampled) 1 refusal line in 100.
    let attempt = API_PER_M + lambda(deduct_ms) + logs(1.0 + 0.01);
    // A placed order: its admission (the API, deduct, an EMF line and its
    // log line), one SendMessage, a tenth of a receive and of a delete
    // batch, a tenth of a consumer invocation (its EMF line too) plus its
    // log line, and the placement: three items of under 1 KB in one
    // transaction, 2 WRU each, and the index entries it writes (the
    // order's in gsi1 and gsi2, the product item's in gsi1 when the order
    // takes from shard 0), 1 WRU each.
    let batch_ms = measured.consumer_batch_ms.unwrap_or(50.0);
    let placed = API_PER_M
        + lambda(deduct_ms)
        + logs(2.0)
        + SQS_PER_M * 1.2
        + lambda(batch_ms) / 10.0
        + logs(1.0 + 0.1)
        + DDB_WRU_PER_M * 9.0;
    let basis = format!(
        "deduct {deduct_ms:.2} ms a buy (figure 2, billed as 1 ms), the consumer {batch_ms:.0} ms a batch of 10 (figure 4, on DynamoDB Local), 256 MB arm64; prices: HTTP API $1.00/M, Lambda $0.20/M + $0.0000133334/GB-s, SQS $0.40/M, DynamoDB on demand $0.625/M WRU, CloudWatch Logs $0.50/GB at {LOG_LINE:.0} B a line (us-east-1 list prices as published in 2025; measured {})",
        time::OffsetDateTime::now_utc().date()
    );
    vec![
        Row {
            figure: format!("9. cost, $ per million buy attempts that are refused ({basis})"),
            ours: format!("{attempt:.2}"),
            baseline: format!("{API_PER_M:.2} (API Gateway alone)"),
            ratio: format!("{:.2}", attempt / API_PER_M),
            runs: "computed".into(),
            target: "(reported)".into(),
            met: "-",
        },
        Row {
            figure: "9. cost, $ per million placed orders (admission, queue, placement; payment and expiry not included)".into(),
            ours: format!("{placed:.2}"),
            baseline: format!("{API_PER_M:.2} (API Gateway alone)"),
            ratio: format!("{:.2}", placed / API_PER_M),
            runs: "computed".into(),
            target: "(reported)".into(),
            met: "-",
        },
    ]
}
