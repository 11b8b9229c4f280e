//! Figure 15: the waiting room (issue 33) against a crowd ten times what a
//! throttled origin takes, beside the same crowd without the room, in one
//! run (`flashsale crowd` prints the same as one line).

use super::*;
use tools::crowd::{CrowdReport, CrowdSpec};

pub(super) async fn crowd_figure(sdk: &aws_config::SdkConfig) -> Result<Vec<Row>> {
    let spec = CrowdSpec::standard();
    let CrowdReport { room, without, .. } = tools::crowd::run(sdk, &spec).await?;
    let of = format!(
        "a sale of {} units behind an origin throttled to {:.0} buys/s (API Gateway's 429 beyond), {} visitors arriving at {:.0}/s around the start ({} bots arriving early, refreshing every 100 ms, {} accounts each), through the room (inlet {} entries/s) vs straight at the buy",
        spec.stock,
        spec.origin_rate,
        room.visitors,
        spec.arrivals_per_sec,
        room.bots,
        spec.bot_accounts,
        spec.inlet_rate,
    );
    let row = |figure: String,
               ours: String,
               baseline: String,
               ratio: String,
               target: &str,
               met: &'static str| Row {
        figure,
        ours,
        baseline,
        ratio,
        runs: "1".into(),
        target: target.into(),
        met,
    };
    let inlet = room.inlet_rate.max(f64::MIN_POSITIVE);
    Ok(vec![
        row(
            format!("15. {of}: origin requests/s while people waited (the inlet's opening to the last let-in, {:.0} s) vs the inlet's rate", room.busy_secs),
            format!("{:.1}", room.origin_rps),
            format!("{inlet:.1}"),
            format!("{:.2}", room.origin_rps / inlet),
            "≤ 1.1",
            verdict(room.origin_rps <= 1.1 * inlet),
        ),
        row(
            "15. the same: 429s from the origin's throttle, with the room vs without".into(),
            room.throttled.to_string(),
            without.throttled.to_string(),
            "-".into(),
            "0 with the room",
            verdict(room.throttled == 0),
        ),
        row(
            "15. the same: visitors let in per second vs the inlet's rate".into(),
            format!("{:.1}", room.admitted_rate),
            format!("{inlet:.1}"),
            format!("{:.2}", room.admitted_rate / inlet),
            "within ±5%",
            verdict((room.admitted_rate / inlet - 1.0).abs() <= 0.05),
        ),
        row(
            format!("15. the same: Kendall's tau between arrival and let-in, arrivals before the start ({} let in) vs after it ({})", room.early_let_in, room.after_let_in),
            format!("{:.3}", room.tau_early),
            format!("{:.3}", room.tau_after),
            "-".into(),
            "abs(tau) ≤ 0.05 before; FIFO (≈ 1) after",
            verdict(room.tau_early.abs() <= 0.05 && room.tau_after > 0.9),
        ),
        row(
            "15. the same: the bots' share of the units over their share of the accounts, with the room vs without".into(),
            format!("{:.2}", room.bot_advantage()),
            format!("{:.2}", without.bot_advantage()),
            "-".into(),
            "≤ 1.1",
            verdict(room.bot_advantage() <= 1.1),
        ),
        row(
            "15. the same: the wait the room's first page estimated, absolute error, p50 / p90 (s)".into(),
            format!("{:.1} / {:.1}", room.wait_error_p50, room.wait_error_p90),
            "-".into(),
            "-".into(),
            "(reported)",
            "reported",
        ),
        row(
            "15. the same: the buy's p99 once let in (ms), and units oversold / books balanced with the room and without".into(),
            format!("{:.0}", room.buy_p99_ms),
            format!("oversold {} / {}, balanced {} / {}", room.oversold, without.oversold, room.balanced, without.balanced),
            "-".into(),
            "oversold 0, balanced",
            verdict(room.oversold == 0 && without.oversold == 0 && room.balanced && without.balanced),
        ),
    ])
}
