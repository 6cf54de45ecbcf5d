//! What `GET /metrics` reports, in Prometheus' text format: requests by route and status, how
//! long they took and waited, what each forward pass carried, and the queue.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

use super::batcher::Observer;

/// Seconds: from a millisecond to a minute.
const SECONDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
const WINDOWS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];
const TOKENS: &[f64] = &[
    128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0, 32768.0, 65536.0,
];

/// A Prometheus histogram with fixed bucket bounds.
#[derive(Debug, Clone)]
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, value: f64) {
        if let Some(i) = self.bounds.iter().position(|&b| value <= b) {
            self.counts[i] += 1;
        }
        self.sum += value;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            cumulative += count;
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}", self.sum);
        let _ = writeln!(out, "{name}_count {}", self.count);
    }
}

/// One counter or gauge with its help line.
fn scalar(out: &mut String, kind: &str, name: &str, help: &str, value: f64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
    );
}

struct Inner {
    requests: BTreeMap<(&'static str, u16), u64>,
    request_seconds: Histogram,
    queue_seconds: Histogram,
    batch_windows: Histogram,
    batch_tokens: Histogram,
    windows: u64,
    inference_seconds: f64,
    abandoned_requests: u64,
    abandoned_windows: u64,
}

/// The server's counters; cheap to update from any thread.
pub struct Metrics(Mutex<Inner>);

/// Gauges read when the metrics are rendered.
pub struct Gauges {
    pub queued_windows: usize,
    pub queued_tokens: usize,
    /// The model's speed as admission estimates it (0 before the first forward pass).
    pub tokens_per_second: f64,
    pub requests_in_flight: usize,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics(Mutex::new(Inner {
            requests: BTreeMap::new(),
            request_seconds: Histogram::new(SECONDS),
            queue_seconds: Histogram::new(SECONDS),
            batch_windows: Histogram::new(WINDOWS),
            batch_tokens: Histogram::new(TOKENS),
            windows: 0,
            inference_seconds: 0.0,
            abandoned_requests: 0,
            abandoned_windows: 0,
        }))
    }
}

impl Metrics {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic elsewhere while holding the lock leaves counters that are still counters.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A response went out; only answers count towards the duration histogram.
    pub fn request(&self, route: &'static str, status: u16, took: Duration) {
        let mut m = self.inner();
        *m.requests.entry((route, status)).or_default() += 1;
        if route == "/v1/answer" {
            m.request_seconds.observe(took.as_secs_f64());
        }
    }

    pub fn render(&self, gauges: &Gauges) -> String {
        let m = self.inner();
        let mut out = String::new();
        out.push_str("# HELP qa_requests_total Responses by route and HTTP status.\n");
        out.push_str("# TYPE qa_requests_total counter\n");
        for ((route, status), n) in &m.requests {
            let _ = writeln!(
                out,
                "qa_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        m.request_seconds.render(
            &mut out,
            "qa_request_duration_seconds",
            "Time from request to answer on /v1/answer, any status.",
        );
        m.queue_seconds.render(
            &mut out,
            "qa_queue_duration_seconds",
            "Time an answered request waited for its first forward pass.",
        );
        m.batch_windows
            .render(&mut out, "qa_batch_windows", "Windows per forward pass.");
        m.batch_tokens.render(
            &mut out,
            "qa_batch_tokens",
            "Padded tokens per forward pass (longest window x windows).",
        );
        let counters = [
            (
                "qa_windows_total",
                "Windows run by the model; rate() gives windows per second.",
                m.windows as f64,
            ),
            (
                "qa_inference_seconds_total",
                "Time spent in forward passes.",
                m.inference_seconds,
            ),
            (
                "qa_abandoned_requests_total",
                "Requests dropped from the queue because the client left or timed out.",
                m.abandoned_requests as f64,
            ),
            (
                "qa_abandoned_windows_total",
                "Queued windows dropped with those requests.",
                m.abandoned_windows as f64,
            ),
        ];
        for (name, help, value) in counters {
            scalar(&mut out, "counter", name, help, value);
        }
        let gauges = [
            (
                "qa_queued_windows",
                "Windows waiting for the model.",
                gauges.queued_windows as f64,
            ),
            (
                "qa_queued_tokens",
                "Tokens of the windows waiting for the model.",
                gauges.queued_tokens as f64,
            ),
            (
                "qa_model_tokens_per_second",
                "The model's speed, a moving average over forward passes; admission refuses work it could not finish within --request-timeout.",
                gauges.tokens_per_second,
            ),
            (
                "qa_requests_in_flight",
                "Answer requests admitted and not yet answered.",
                gauges.requests_in_flight as f64,
            ),
        ];
        for (name, help, value) in gauges {
            scalar(&mut out, "gauge", name, help, value);
        }
        out
    }
}

impl Observer for Metrics {
    fn batch(&self, windows: usize, tokens: usize, took: Duration) {
        let mut m = self.inner();
        m.batch_windows.observe(windows as f64);
        m.batch_tokens.observe(tokens as f64);
        m.windows += windows as u64;
        m.inference_seconds += took.as_secs_f64();
    }

    fn queued(&self, waited: Duration) {
        self.inner().queue_seconds.observe(waited.as_secs_f64());
    }

    fn abandoned(&self, requests: usize, windows: usize) {
        let mut m = self.inner();
        m.abandoned_requests += requests as u64;
        m.abandoned_windows += windows as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_counters_labelled() {
        let metrics = Metrics::default();
        metrics.request("/v1/answer", 200, Duration::from_millis(30));
        metrics.request("/v1/answer", 200, Duration::from_millis(300));
        metrics.request("/v1/answer", 429, Duration::from_micros(100));
        metrics.request("/health", 200, Duration::from_micros(100));
        metrics.batch(3, 900, Duration::from_millis(40));
        let text = metrics.render(&Gauges {
            queued_windows: 5,
            queued_tokens: 900,
            tokens_per_second: 1234.5,
            requests_in_flight: 2,
        });
        for line in [
            "qa_requests_total{route=\"/v1/answer\",status=\"200\"} 2",
            "qa_requests_total{route=\"/v1/answer\",status=\"429\"} 1",
            "qa_requests_total{route=\"/health\",status=\"200\"} 1",
            "qa_request_duration_seconds_bucket{le=\"0.001\"} 1",
            "qa_request_duration_seconds_bucket{le=\"0.05\"} 2",
            "qa_request_duration_seconds_bucket{le=\"0.5\"} 3",
            "qa_request_duration_seconds_bucket{le=\"+Inf\"} 3",
            "qa_request_duration_seconds_count 3",
            "qa_batch_windows_bucket{le=\"4\"} 1",
            "qa_batch_tokens_bucket{le=\"512\"} 0",
            "qa_batch_tokens_bucket{le=\"1024\"} 1",
            "qa_windows_total 3",
            "qa_queued_windows 5",
            "qa_queued_tokens 900",
            "qa_model_tokens_per_second 1234.5",
            "qa_requests_in_flight 2",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        // Every sample line is `name{labels} value` or `name value` with a number.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
}
