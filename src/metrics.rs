//! Engine metrics as a struct and as Prometheus text, with vLLM's names under `llmrt_`.

use std::fmt::Write;

/// A cumulative histogram with fixed bucket bounds (seconds).
#[derive(Clone, Debug, PartialEq)]
pub struct Histogram {
    pub bounds: &'static [f64],
    /// Count of observations `<= bounds[i]` (not cumulative per bucket; cumulated when rendered).
    pub buckets: Vec<u64>,
    pub count: u64,
    pub sum: f64,
}

const LATENCY_BOUNDS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0,
];

impl Histogram {
    pub fn latency() -> Self {
        Histogram {
            bounds: LATENCY_BOUNDS,
            buckets: vec![0; LATENCY_BOUNDS.len()],
            count: 0,
            sum: 0.0,
        }
    }

    pub fn observe(&mut self, v: f64) {
        if let Some(i) = self.bounds.iter().position(|&b| v <= b) {
            self.buckets[i] += 1;
        }
        self.count += 1;
        self.sum += v;
    }

    /// The value below which fraction `q` of observations fall (bucket upper bound).
    pub fn quantile(&self, q: f64) -> f64 {
        let target = (q * self.count as f64).ceil() as u64;
        let mut seen = 0;
        for (i, &n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= target.max(1) {
                return self.bounds[i];
            }
        }
        f64::INFINITY
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Metrics {
    pub num_requests_running: usize,
    pub num_requests_waiting: usize,
    pub kv_cache_usage_ratio: f64,
    pub num_kv_blocks: usize,
    pub num_free_kv_blocks: usize,
    pub prefix_cache_queries: u64,
    pub prefix_cache_hits: u64,
    pub num_preemptions: u64,
    /// Structured-output token masks computed, and the seconds spent on them.
    pub structured_output_masks: u64,
    pub structured_output_mask_seconds: f64,
    pub prompt_tokens: u64,
    pub generation_tokens: u64,
    pub requests_finished: u64,
    pub requests_aborted: u64,
    pub time_to_first_token_seconds: Histogram,
    pub inter_token_latency_seconds: Histogram,
    pub e2e_request_latency_seconds: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            num_requests_running: 0,
            num_requests_waiting: 0,
            kv_cache_usage_ratio: 0.0,
            num_kv_blocks: 0,
            num_free_kv_blocks: 0,
            prefix_cache_queries: 0,
            prefix_cache_hits: 0,
            num_preemptions: 0,
            structured_output_masks: 0,
            structured_output_mask_seconds: 0.0,
            prompt_tokens: 0,
            generation_tokens: 0,
            requests_finished: 0,
            requests_aborted: 0,
            time_to_first_token_seconds: Histogram::latency(),
            inter_token_latency_seconds: Histogram::latency(),
            e2e_request_latency_seconds: Histogram::latency(),
        }
    }
}

impl Metrics {
    pub fn to_json(&self) -> serde_json::Value {
        let h = |h: &Histogram| {
            serde_json::json!({
                "count": h.count, "sum": h.sum,
                "p50": finite(h.quantile(0.5)), "p99": finite(h.quantile(0.99)),
            })
        };
        serde_json::json!({
            "num_requests_running": self.num_requests_running,
            "num_requests_waiting": self.num_requests_waiting,
            "kv_cache_usage_ratio": self.kv_cache_usage_ratio,
            "num_kv_blocks": self.num_kv_blocks,
            "num_free_kv_blocks": self.num_free_kv_blocks,
            "prefix_cache_queries": self.prefix_cache_queries,
            "prefix_cache_hits": self.prefix_cache_hits,
            "num_preemptions": self.num_preemptions,
            "structured_output_masks": self.structured_output_masks,
            "structured_output_mask_seconds": self.structured_output_mask_seconds,
            "prompt_tokens": self.prompt_tokens,
            "generation_tokens": self.generation_tokens,
            "requests_finished": self.requests_finished,
            "requests_aborted": self.requests_aborted,
            "time_to_first_token_seconds": h(&self.time_to_first_token_seconds),
            "inter_token_latency_seconds": h(&self.inter_token_latency_seconds),
            "e2e_request_latency_seconds": h(&self.e2e_request_latency_seconds),
        })
    }

    /// Prometheus text exposition format.
    pub fn to_prometheus(&self) -> String {
        let mut s = String::new();
        let mut gauge = |name: &str, help: &str, kind: &str, v: f64| {
            let _ = writeln!(
                s,
                "# HELP llmrt_{name} {help}\n# TYPE llmrt_{name} {kind}\nllmrt_{name} {v}"
            );
        };
        gauge(
            "num_requests_running",
            "Requests in the running batch.",
            "gauge",
            self.num_requests_running as f64,
        );
        gauge(
            "num_requests_waiting",
            "Requests waiting to be scheduled.",
            "gauge",
            self.num_requests_waiting as f64,
        );
        gauge(
            "kv_cache_usage_ratio",
            "Fraction of KV blocks in use.",
            "gauge",
            self.kv_cache_usage_ratio,
        );
        gauge(
            "prefix_cache_queries_total",
            "Prompt tokens looked up in the prefix cache.",
            "counter",
            self.prefix_cache_queries as f64,
        );
        gauge(
            "prefix_cache_hits_total",
            "Prompt tokens found in the prefix cache.",
            "counter",
            self.prefix_cache_hits as f64,
        );
        gauge(
            "num_preemptions_total",
            "Requests preempted for lack of KV blocks.",
            "counter",
            self.num_preemptions as f64,
        );
        gauge(
            "structured_output_masks_total",
            "Structured-output token masks computed.",
            "counter",
            self.structured_output_masks as f64,
        );
        gauge(
            "structured_output_mask_seconds_total",
            "Seconds spent computing and applying structured-output masks.",
            "counter",
            self.structured_output_mask_seconds,
        );
        gauge(
            "prompt_tokens_total",
            "Prompt tokens processed.",
            "counter",
            self.prompt_tokens as f64,
        );
        gauge(
            "generation_tokens_total",
            "Tokens generated.",
            "counter",
            self.generation_tokens as f64,
        );
        gauge(
            "request_success_total",
            "Requests finished (not aborted).",
            "counter",
            self.requests_finished as f64,
        );
        gauge(
            "request_aborted_total",
            "Requests aborted.",
            "counter",
            self.requests_aborted as f64,
        );
        for (name, help, h) in [
            (
                "time_to_first_token_seconds",
                "Time to first token.",
                &self.time_to_first_token_seconds,
            ),
            (
                "inter_token_latency_seconds",
                "Time between tokens.",
                &self.inter_token_latency_seconds,
            ),
            (
                "e2e_request_latency_seconds",
                "Request latency.",
                &self.e2e_request_latency_seconds,
            ),
        ] {
            let _ = writeln!(
                s,
                "# HELP llmrt_{name} {help}\n# TYPE llmrt_{name} histogram"
            );
            let mut cum = 0;
            for (b, n) in h.bounds.iter().zip(&h.buckets) {
                cum += n;
                let _ = writeln!(s, "llmrt_{name}_bucket{{le=\"{b}\"}} {cum}");
            }
            let _ = writeln!(s, "llmrt_{name}_bucket{{le=\"+Inf\"}} {}", h.count);
            let _ = writeln!(
                s,
                "llmrt_{name}_sum {}\nllmrt_{name}_count {}",
                h.sum, h.count
            );
        }
        s
    }
}

fn finite(v: f64) -> serde_json::Value {
    if v.is_finite() {
        serde_json::json!(v)
    } else {
        serde_json::Value::Null
    }
}
