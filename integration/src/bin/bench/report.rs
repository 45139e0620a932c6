//! The benches' rows: the figures of one measurement, the table they print as, and the
//! statistics and memory reading they are made of.

use serde::Serialize;

/// One row of a bench's table.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Row {
    pub(crate) bench: &'static str,
    pub(crate) scheme: String,
    pub(crate) cables: usize,
    pub(crate) outlets: usize,
    pub(crate) payments: usize,
    pub(crate) p50_ms: f64,
    pub(crate) p90_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) payments_per_s: f64,
    pub(crate) refused: usize,
    pub(crate) lost: usize,
    pub(crate) socket_rss_mb: f64,
}

/// Print `rows` as a table.
pub(crate) fn print_table(rows: &[Row]) {
    println!(
        "\n{:<9} | {:<14} | {:>6} | {:>7} | {:>8} | {:>8} | {:>8} | {:>8} | {:>10} | {:>7} | {:>4} | {:>9}",
        "bench", "scheme", "cables", "outlets", "payments", "p50 ms", "p90 ms", "p99 ms",
        "payments/s", "refused", "lost", "socket MB"
    );
    for r in rows {
        println!(
            "{:<9} | {:<14} | {:>6} | {:>7} | {:>8} | {:>8.1} | {:>8.1} | {:>8.1} | {:>10.1} | {:>7} | {:>4} | {:>9.1}",
            r.bench,
            r.scheme,
            r.cables,
            r.outlets,
            r.payments,
            r.p50_ms,
            r.p90_ms,
            r.p99_ms,
            r.payments_per_s,
            r.refused,
            r.lost,
            r.socket_rss_mb
        );
    }
}

/// The q-quantile (nearest rank) of sorted samples, 0 when there are none.
pub(crate) fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// `samples` in ascending order.
pub(crate) fn sorted(mut samples: Vec<f64>) -> Vec<f64> {
    samples.sort_by(f64::total_cmp);
    samples
}

/// Peak resident memory of a process, MB (VmHWM).
pub(crate) fn peak_rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}
