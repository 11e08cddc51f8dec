//! JSON logs for CloudWatch and metrics as CloudWatch Embedded Metric Format lines.
//!
//! EMF is one JSON object per line on stdout; CloudWatch turns it into metrics. A record is
//! written by hand (a dozen lines) instead of installing a global metrics recorder: each
//! function emits at most one or two records per invocation.

use serde_json::{json, Map, Value};

pub const NAMESPACE: &str = "MaestroRelay";

/// Logs as one JSON object per line, level from `RUST_LOG` or Lambda's
/// `AWS_LAMBDA_LOG_LEVEL`, INFO otherwise. Span fields (such as `jobId`) ride on every line.
pub fn init_logging() {
    let level = std::env::var("RUST_LOG")
        .or_else(|_| std::env::var("AWS_LAMBDA_LOG_LEVEL").map(|l| l.to_lowercase()))
        .unwrap_or_else(|_| "info".to_owned());
    let filter =
        tracing_subscriber::EnvFilter::try_new(&level).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_current_span(true)
        .with_span_list(false)
        .flatten_event(true)
        .with_target(false)
        .try_init();
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

/// Builds an EMF record: `dimensions` become CloudWatch dimensions (one set), `properties`
/// ride along as searchable fields.
pub fn emf_record(dimensions: &[(&str, &str)], metrics: &[(&str, Metric)], properties: &[(&str, Value)]) -> Value {
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
    let timestamp_ms = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
    record.insert(
        "_aws".into(),
        json!({
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [{
                "Namespace": NAMESPACE,
                "Dimensions": [dimensions.iter().map(|(k, _)| *k).collect::<Vec<_>>()],
                "Metrics": definitions,
            }],
        }),
    );
    for (key, value) in dimensions {
        record.insert((*key).into(), json!(value));
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

/// Writes an EMF record as one line on stdout, where Lambda's log agent picks it up.
pub fn emit(record: &Value) {
    println!("{record}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_emf_record_declares_every_metric_with_its_unit_and_dimension() {
        let record = emf_record(
            &[("Function", "worker")],
            &[("JobsDelivered", Metric::Count(1.0)), ("Bytes", Metric::Bytes(42.0))],
            &[("jobId", json!("abc"))],
        );
        let cw = &record["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(cw["Namespace"], "MaestroRelay");
        assert_eq!(cw["Dimensions"], json!([["Function"]]));
        assert_eq!(cw["Metrics"][1], json!({"Name": "Bytes", "Unit": "Bytes"}));
        assert_eq!(record["JobsDelivered"], 1.0);
        assert_eq!(record["Function"], "worker");
        assert_eq!(record["jobId"], "abc");
    }
}
