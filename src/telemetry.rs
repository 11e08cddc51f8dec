//! JSON logs for CloudWatch and metrics as CloudWatch Embedded Metric Format lines.
//!
//! EMF is one JSON object per line on stdout; CloudWatch turns it into metrics. A record is
//! written by hand (a dozen lines) instead of installing a global metrics recorder: each
//! function emits at most one or two records per invocation.

use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::{json, Map, Value};

pub const NAMESPACE: &str = "MaestroRelay";

/// Set by a process whose stdout is its own answer (the operator's tool running a function
/// in its process): logs and metric records go to stderr instead.
static ON_STDERR: AtomicBool = AtomicBool::new(false);

/// Logs as one JSON object per line, level from `RUST_LOG` or Lambda's
/// `AWS_LAMBDA_LOG_LEVEL`, INFO otherwise. Span fields (such as `jobId`) ride on every line.
///
/// `lambda_runtime` logs every raw invocation event at TRACE (its `layers::api_response`),
/// which for the webhook holds the caller's `Authorization` header and for any function
/// whatever the event carries. No level setting may turn that on: the Lambda crates are
/// held at INFO by a filter the level variables do not reach (a `RUST_LOG` directive such
/// as `lambda_runtime::layers=trace` would override a mere directive of ours).
pub fn init_logging() {
    init_logging_at("info");
}

/// As `init_logging`, with `default_level` when neither variable sets one.
pub fn init_logging_at(default_level: &str) {
    use tracing_subscriber::fmt::writer::BoxMakeWriter;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let level = std::env::var("RUST_LOG")
        .or_else(|_| std::env::var("AWS_LAMBDA_LOG_LEVEL").map(|l| l.to_lowercase()))
        .unwrap_or_else(|_| default_level.to_owned());
    let filter =
        tracing_subscriber::EnvFilter::try_new(&level).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let layer = tracing_subscriber::fmt::layer()
        .json()
        .with_current_span(true)
        .with_span_list(false)
        .flatten_event(true)
        .with_target(false)
        .with_writer(if ON_STDERR.load(Ordering::Relaxed) {
            BoxMakeWriter::new(std::io::stderr)
        } else {
            BoxMakeWriter::new(std::io::stdout)
        })
        .with_filter(filter)
        .with_filter(tracing_subscriber::filter::filter_fn(|meta| !is_raw_event_source(meta)));
    let _ = tracing_subscriber::registry().with(layer).try_init();
}

/// Events and spans of the Lambda runtime crates below INFO: where raw events are logged.
pub fn is_raw_event_source(meta: &tracing::Metadata<'_>) -> bool {
    meta.target().starts_with("lambda_runtime") && *meta.level() > tracing::Level::INFO
}

/// `fetch` → `Fetch`: step names as they appear in metric names and error types.
pub(crate) fn capitalise(word: &str) -> String {
    let mut chars = word.chars();
    chars.next().map(|c| c.to_ascii_uppercase().to_string() + chars.as_str()).unwrap_or_default()
}

/// A metric value with its CloudWatch unit.
#[derive(Debug, Clone, Copy)]
pub enum Metric {
    Count(f64),
    Milliseconds(f64),
    Bytes(f64),
}

/// Every metric the worker emits. The template's alarms may watch only these (a test reads
/// `template.yaml` against this list).
pub const WORKER_METRICS: &[&str] = &[
    "JobsDelivered",
    "JobsResent",
    "ResendsFailed",
    "JobsFailed",
    "JobsFailedFinal",
    "JobsSkipped",
    "JobsBusy",
    "JobsStale",
    "Rows",
    "Bytes",
    "TotalMs",
    "FetchMs",
    "StageMs",
    "RestoreMs",
    "DeliverMs",
    "EventsNotPublished",
    "FilesNotPickedUp",
    "FilesUnchecked",
];

/// Every metric the webhook emits.
pub const WEBHOOK_METRICS: &[&str] = &["JobsAccepted"];

/// The dimension sets of every record: the stack and function always, and the SAP target
/// where the record concerns one (so a missing WP2 batch is not hidden by PF2 deliveries).
pub const DIMENSION_SETS: [&[&str]; 2] = [&["Stack", "Function"], &["Stack", "Function", "Target"]];

/// Where a metric record belongs. The stack is a dimension so that a dev stack in the same
/// account never keeps prod's alarms green.
#[derive(Debug, Clone, Copy)]
pub struct MetricScope<'a> {
    pub stack: &'a str,
    pub function: &'a str,
    pub target: Option<&'a str>,
}

/// Builds an EMF record in `scope`; `properties` ride along as searchable fields.
///
/// The record carries `"level": "WARN"`: Lambda's log-level filter reads that key and drops
/// a line without it as INFO once `ApplicationLogLevel` is raised to WARN, which would
/// silently stop every metric (and so every alarm on one).
pub fn emf_record(scope: MetricScope<'_>, metrics: &[(&str, Metric)], properties: &[(&str, Value)]) -> Value {
    let mut record = Map::new();
    let definitions: Vec<Value> = metrics
        .iter()
        .map(|(name, metric)| {
            let unit = match metric {
                Metric::Count(_) => "Count",
                Metric::Milliseconds(_) => "Milliseconds",
                Metric::Bytes(_) => "Bytes",
            };
            json!({"Name": name, "Unit": unit})
        })
        .collect();
    let dimension_sets: &[&[&str]] = if scope.target.is_some() { &DIMENSION_SETS } else { &DIMENSION_SETS[..1] };
    let timestamp_ms = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
    record.insert("level".into(), json!("WARN"));
    record.insert(
        "_aws".into(),
        json!({
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [{
                "Namespace": NAMESPACE,
                "Dimensions": dimension_sets,
                "Metrics": definitions,
            }],
        }),
    );
    record.insert("Stack".into(), json!(scope.stack));
    record.insert("Function".into(), json!(scope.function));
    if let Some(target) = scope.target {
        record.insert("Target".into(), json!(target));
    }
    for (name, metric) in metrics {
        let (Metric::Count(v) | Metric::Milliseconds(v) | Metric::Bytes(v)) = metric;
        record.insert((*name).into(), json!(v));
    }
    for (key, value) in properties {
        record.insert((*key).into(), value.clone());
    }
    Value::Object(record)
}

/// Logs and metric records on stderr from now on, for a process whose stdout is its answer;
/// call it before `init_logging`.
pub fn write_to_stderr() {
    ON_STDERR.store(true, Ordering::Relaxed);
}

/// Writes an EMF record as one line on stdout, where Lambda's log agent picks it up.
pub fn emit(record: &Value) {
    if ON_STDERR.load(Ordering::Relaxed) {
        eprintln!("{record}");
    } else {
        println!("{record}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_emf_record_declares_every_metric_with_its_unit_and_the_stack_function_and_target_dimensions() {
        let scope = MetricScope { stack: "relay-prod", function: "worker", target: Some("PF2") };
        let record = emf_record(
            scope,
            &[("JobsDelivered", Metric::Count(1.0)), ("Bytes", Metric::Bytes(42.0))],
            &[("jobId", json!("abc"))],
        );
        let cw = &record["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(cw["Namespace"], "MaestroRelay");
        assert_eq!(cw["Dimensions"], json!([["Stack", "Function"], ["Stack", "Function", "Target"]]));
        assert_eq!(cw["Metrics"][1], json!({"Name": "Bytes", "Unit": "Bytes"}));
        assert_eq!(record["JobsDelivered"], 1.0);
        assert_eq!((record["Stack"].as_str(), record["Function"].as_str()), (Some("relay-prod"), Some("worker")));
        assert_eq!(record["Target"], "PF2");
        assert_eq!(record["jobId"], "abc");
        assert_eq!(record["level"], "WARN", "survives ApplicationLogLevel WARN");
    }

    #[test]
    fn a_record_without_a_target_has_only_the_stack_and_function_dimensions() {
        let record = emf_record(
            MetricScope { stack: "s", function: "worker", target: None },
            &[("JobsFailed", Metric::Count(1.0))],
            &[],
        );
        assert_eq!(record["_aws"]["CloudWatchMetrics"][0]["Dimensions"], json!([["Stack", "Function"]]));
        assert!(record.get("Target").is_none());
    }
}
