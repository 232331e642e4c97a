//! What a run measured: per-worker [`Recorder`]s (an HDR histogram and error
//! counts, no sharing on the hot path) merged into a [`Summary`] at the end.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::scenarios::Outcome;

/// Highest latency the histogram tracks exactly (longer ones saturate here).
const MAX_TRACKED_NANOS: u64 = 3_600 * 1_000_000_000;
/// Significant figures of the histogram (0.1 % resolution).
const SIGNIFICANT_FIGURES: u8 = 3;

/// Result of a run, as printed by `tessera bench` (table or JSON).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Scenario name.
    pub scenario: String,
    /// URL of the measured API server.
    pub target: String,
    /// `closed-loop` or `open-loop`.
    pub mode: &'static str,
    /// Target rate of an open-loop run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
    /// Concurrent workers.
    pub concurrency: usize,
    /// Wall time of the measured phase, in seconds.
    pub elapsed_seconds: f64,
    /// Requests measured: successful plus failed.
    pub count: u64,
    /// Requests that got the expected answer.
    pub ok: u64,
    /// Failed requests by cause: an HTTP status (`"404"`), `unexpected-body`,
    /// `transport` or `timeout`.
    pub errors: BTreeMap<String, u64>,
    /// The first message seen for each error cause, to tell what went wrong.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub error_samples: BTreeMap<String, String>,
    /// Completed requests (successful or not) per second of `elapsed_seconds`.
    pub requests_per_second: f64,
    /// Latency of the successful requests.
    pub latency_ms: Latency,
    /// Why the run stopped before its limit (interrupted, inputs exhausted).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped_early: Option<String>,
}

/// Latency distribution in milliseconds (all zero when nothing succeeded).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Latency {
    /// Fastest.
    pub min: f64,
    /// Arithmetic mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Slowest.
    pub max: f64,
}

/// One worker's measurements.
#[derive(Debug, Clone)]
pub(crate) struct Recorder {
    histogram: Histogram<u64>,
    ok: u64,
    errors: BTreeMap<String, u64>,
    samples: BTreeMap<String, String>,
}

/// The fixed facts of a run, to put beside the measurements.
#[derive(Debug, Clone)]
pub(crate) struct RunInfo {
    pub(crate) scenario: String,
    pub(crate) target: String,
    pub(crate) rate: Option<f64>,
    pub(crate) concurrency: usize,
}

// === impl Recorder ===

impl Recorder {
    pub(crate) fn new() -> Self {
        // Invariant: the bounds are constants that satisfy hdrhistogram's rules
        // (low >= 1, high >= 2 * low, sigfig <= 5).
        let histogram = Histogram::new_with_bounds(1, MAX_TRACKED_NANOS, SIGNIFICANT_FIGURES).expect("valid histogram bounds");
        Self { histogram, ok: 0, errors: BTreeMap::new(), samples: BTreeMap::new() }
    }

    /// Records one finished request.
    pub(crate) fn record(&mut self, outcome: Outcome, latency: Duration) {
        match outcome {
            Outcome::Ok => {
                self.ok += 1;
                let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX).max(1);
                self.histogram.saturating_record(nanos);
            }
            Outcome::Failed { cause, detail } => {
                let key = cause.key();
                if !self.samples.contains_key(&key) {
                    self.samples.insert(key.clone(), detail);
                }
                *self.errors.entry(key).or_default() += 1;
            }
        }
    }

    /// Requests recorded so far.
    pub(crate) fn count(&self) -> u64 {
        self.ok + self.errors.values().sum::<u64>()
    }

    /// Adds another worker's measurements.
    pub(crate) fn merge(&mut self, other: Recorder) {
        // Both histograms have the same bounds, so adding cannot fail; saturate
        // rather than lose the run if that ever changes.
        if self.histogram.add(&other.histogram).is_err() {
            for v in other.histogram.iter_recorded() {
                self.histogram.saturating_record_n(v.value_iterated_to(), v.count_at_value());
            }
        }
        self.ok += other.ok;
        for (key, n) in other.errors {
            *self.errors.entry(key).or_default() += n;
        }
        for (key, sample) in other.samples {
            self.samples.entry(key).or_insert(sample);
        }
    }

    /// The summary of these measurements over `elapsed`.
    pub(crate) fn summarize(&self, info: RunInfo, elapsed: Duration, stopped_early: Option<String>) -> Summary {
        let count = self.count();
        let seconds = elapsed.as_secs_f64();
        Summary {
            scenario: info.scenario,
            target: info.target,
            mode: if info.rate.is_some() { "open-loop" } else { "closed-loop" },
            rate: info.rate,
            concurrency: info.concurrency,
            elapsed_seconds: seconds,
            count,
            ok: self.ok,
            errors: self.errors.clone(),
            error_samples: self.samples.clone(),
            requests_per_second: if seconds > 0.0 { count as f64 / seconds } else { 0.0 },
            latency_ms: Latency::of(&self.histogram),
            stopped_early,
        }
    }
}

// === impl Latency ===

impl Latency {
    fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let ms = |nanos: u64| nanos as f64 / 1e6;
        Self {
            min: ms(h.min()),
            mean: h.mean() / 1e6,
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

// === impl Summary ===

impl Summary {
    /// Failed requests.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Pretty-printed JSON.
    pub fn to_json(&self) -> crate::Result<String> {
        serde_json::to_string_pretty(self).map_err(crate::Error::Render)
    }

    /// A human-readable table.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let mode = match self.rate {
            Some(rate) => format!("open loop at {rate} req/s"),
            None => "closed loop".to_owned(),
        };
        // Writing to a String cannot fail.
        let _ = writeln!(out, "{} against {}", self.scenario, self.target);
        let _ = writeln!(out, "  mode        {mode}, concurrency {}, {:.2} s measured", self.concurrency, self.elapsed_seconds);
        let _ = writeln!(out, "  requests    {} ({} ok, {} errors)", self.count, self.ok, self.error_count());
        let _ = writeln!(out, "  throughput  {:.1} req/s", self.requests_per_second);
        let l = &self.latency_ms;
        let _ = writeln!(out, "  latency ms  {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}", "p50", "p90", "p99", "p99.9", "max", "mean");
        let _ = writeln!(out, "              {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}", l.p50, l.p90, l.p99, l.p999, l.max, l.mean);
        if self.errors.is_empty() {
            let _ = writeln!(out, "  errors      none");
        } else {
            for (i, (cause, n)) in self.errors.iter().enumerate() {
                let label = if i == 0 { "errors" } else { "" };
                let sample = self.error_samples.get(cause).map(|s| format!("  e.g. {s}")).unwrap_or_default();
                let _ = writeln!(out, "  {label:<10}  {cause}: {n}{sample}");
            }
        }
        if let Some(why) = &self.stopped_early {
            let _ = writeln!(out, "  stopped     early: {why}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenarios::Cause;

    fn info() -> RunInfo {
        RunInfo { scenario: "tokenreview".into(), target: "https://127.0.0.1:6443".into(), rate: None, concurrency: 2 }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn percentiles_of_a_uniform_distribution() {
        let mut r = Recorder::new();
        for i in 1..=1000 {
            r.record(Outcome::Ok, ms(i));
        }
        let s = r.summarize(info(), Duration::from_secs(2), None);
        assert_eq!(s.count, 1000);
        assert_eq!(s.ok, 1000);
        assert_eq!(s.requests_per_second, 500.0);
        let l = s.latency_ms;
        // 3 significant figures: each value is within 0.1 % of the exact one.
        let close = |got: f64, want: f64| (got - want).abs() <= want * 0.001 + 1e-9;
        assert!(close(l.min, 1.0), "{l:?}");
        assert!(close(l.p50, 500.0), "{l:?}");
        assert!(close(l.p90, 900.0), "{l:?}");
        assert!(close(l.p99, 990.0), "{l:?}");
        assert!(close(l.p999, 999.0), "{l:?}");
        assert!(close(l.max, 1000.0), "{l:?}");
        assert!(close(l.mean, 500.5), "{l:?}");
    }

    #[test]
    fn errors_count_but_do_not_enter_the_latency() {
        let mut r = Recorder::new();
        r.record(Outcome::Ok, ms(1));
        r.record(Outcome::failed(Cause::Status(404), "404 page not found"), ms(500));
        r.record(Outcome::failed(Cause::Status(404), "later"), ms(500));
        r.record(Outcome::failed(Cause::Transport, "connection reset"), ms(500));
        let s = r.summarize(info(), Duration::from_secs(1), None);
        assert_eq!((s.count, s.ok, s.error_count()), (4, 1, 3));
        assert_eq!(s.errors, BTreeMap::from([("404".to_owned(), 2), ("transport".to_owned(), 1)]));
        assert_eq!(s.error_samples["404"], "404 page not found");
        assert!(s.latency_ms.max < 1.01);
        assert_eq!(s.requests_per_second, 4.0);
    }

    #[test]
    fn merging_workers_adds_everything() {
        let (mut a, mut b) = (Recorder::new(), Recorder::new());
        for i in 1..=10 {
            a.record(Outcome::Ok, ms(i));
            b.record(Outcome::Ok, ms(100 + i));
        }
        b.record(Outcome::failed(Cause::Timeout, "no event"), ms(1));
        a.merge(b);
        let s = a.summarize(info(), Duration::from_secs(1), None);
        assert_eq!((s.count, s.ok), (21, 20));
        assert_eq!(s.errors["timeout"], 1);
        assert!(s.latency_ms.min < 1.01 && s.latency_ms.max > 109.0);
        assert!(s.latency_ms.p50 <= s.latency_ms.p99 && s.latency_ms.p99 <= s.latency_ms.max);
    }

    #[test]
    fn empty_run_is_all_zero() {
        let s = Recorder::new().summarize(info(), Duration::ZERO, Some("interrupted".into()));
        assert_eq!(s.count, 0);
        assert_eq!(s.requests_per_second, 0.0);
        assert_eq!(s.latency_ms, Latency::default());
        assert!(s.to_table().contains("stopped     early: interrupted"));
    }

    #[test]
    fn overlong_latencies_saturate() {
        let mut r = Recorder::new();
        r.record(Outcome::Ok, Duration::from_secs(10 * 3600));
        let s = r.summarize(info(), Duration::from_secs(1), None);
        assert!(s.latency_ms.max >= 3_600_000.0 * 0.999, "{:?}", s.latency_ms);
    }

    #[test]
    fn renders_table_and_json() {
        let mut r = Recorder::new();
        r.record(Outcome::Ok, ms(2));
        r.record(Outcome::failed(Cause::UnexpectedBody(201), "no authenticated:true"), ms(1));
        let s = r.summarize(RunInfo { rate: Some(100.0), ..info() }, Duration::from_secs(1), None);
        let table = s.to_table();
        assert!(table.contains("open loop at 100 req/s"), "{table}");
        assert!(table.contains("2 (1 ok, 1 errors)"), "{table}");
        assert!(table.contains("unexpected-body (201): 1"), "{table}");
        let json: serde_json::Value = serde_json::from_str(&s.to_json().unwrap()).unwrap();
        assert_eq!(json["mode"], "open-loop");
        assert_eq!(json["count"], 2);
        assert_eq!(json["errors"]["unexpected-body (201)"], 1);
        assert!((json["latency_ms"]["p50"].as_f64().unwrap() - 2.0).abs() < 0.01);
    }
}
