//! What `maestro-relay` prints: the jobs table, one job's story and the dead-letter triage,
//! for people (aligned columns, ages, sizes, colours only on a terminal) or as JSON.

use serde_json::Value;
use time::OffsetDateTime;

use super::dlq::{Triage, TriageAction};
use super::human;
use super::jobs::{JobRow, JobState, Story};
use crate::job::JobId;

/// The jobs as a table, one line each, or one JSON document.
pub fn jobs(rows: &[JobRow], now: OffsetDateTime, json: bool, terminal: bool) -> String {
    if json {
        return serde_json::to_string_pretty(&rows).unwrap_or_default() + "\n";
    }
    if rows.is_empty() {
        return "no jobs in the window\n".to_owned();
    }
    let header = [
        "JOB",
        "RECEIVED",
        "TARGET",
        "FILE NAME",
        "STATE",
        "ROWS",
        "SIZE",
        "DELIVERED",
        "ATTEMPTS",
        "FAILURE",
        "EVENT",
    ];
    let cells: Vec<Vec<String>> = rows.iter().map(|r| job_cells(r, now)).collect();
    let table = human::table(&header, &cells);
    let mut out = String::new();
    for (index, line) in table.lines().enumerate() {
        match index.checked_sub(1).and_then(|i| rows.get(i)) {
            Some(row) if terminal => out.push_str(&format!("{}{line}\x1b[0m\n", colour(row.state))),
            _ => out.push_str(&format!("{line}\n")),
        }
    }
    out
}

fn job_cells(r: &JobRow, now: OffsetDateTime) -> Vec<String> {
    vec![
        r.job_id.to_string(),
        human::ago(r.received_at, now),
        r.target.clone(),
        r.file_name.clone(),
        r.state.as_str().to_owned(),
        r.rows.map(|n| n.to_string()).unwrap_or_default(),
        r.bytes.map(human::size).unwrap_or_default(),
        r.delivered.join(" "),
        r.attempts.map(|n| n.to_string()).unwrap_or_default(),
        r.failure.clone().unwrap_or_default(),
        r.event_id.clone().unwrap_or_default(),
    ]
}

fn colour(state: JobState) -> &'static str {
    match state {
        JobState::Delivered => "\x1b[32m",
        JobState::Failed | JobState::Stranded => "\x1b[31m",
        JobState::Skipped | JobState::Retrying | JobState::Pending | JobState::Running => "\x1b[33m",
    }
}

/// Every record of one job under a heading each, its dead-letter messages and the query
/// that shows its log lines; or all of it as one JSON document.
pub fn story(story: &Story, dead_letters: &[String], query: &str, json: bool) -> String {
    if json {
        let document = serde_json::json!({"story": story, "deadLetters": dead_letters, "logsInsightsQuery": query});
        return serde_json::to_string_pretty(&document).unwrap_or_default() + "\n";
    }
    let pretty = |v: &Value| serde_json::to_string_pretty(v).unwrap_or_default();
    let mut out = format!("job {}\n", story.job_id);
    for (title, value) in [("manifest", &story.manifest), ("staged", &story.staged), ("lease", &story.lease)] {
        match value {
            Some(v) => out.push_str(&format!("\n== {title}\n{}\n", pretty(v))),
            None => out.push_str(&format!("\n== {title}: none\n")),
        }
    }
    for (heading, records) in [("delivery record", &story.deliveries), ("receipt", &story.receipts)] {
        if records.is_empty() {
            out.push_str(&format!("\n== {heading}: none\n"));
        }
        for (key, value) in records {
            out.push_str(&format!("\n== {heading} {key}\n{}\n", pretty(value)));
        }
    }
    out.push_str(&format!("\n== failures: {}\n", story.failures.len()));
    for failure in &story.failures {
        out.push_str(&format!("{}\n", pretty(failure)));
    }
    out.push_str(&format!("\n== dead-letter messages: {}\n", dead_letters.len()));
    for reason in dead_letters {
        out.push_str(&format!("{reason}\n"));
    }
    out.push_str(&format!("\n== its log lines (CloudWatch Logs Insights, both functions' log groups)\n{query}\n"));
    out
}

/// The triage as a table with what was (or would be) done, or one JSON document.
pub fn triage(triaged: &[Triage], apply: bool, json: bool) -> String {
    if json {
        return serde_json::to_string_pretty(&triaged).unwrap_or_default() + "\n";
    }
    if triaged.is_empty() {
        return "the dead-letter queue is empty\n".to_owned();
    }
    let cells: Vec<Vec<String>> = triaged
        .iter()
        .map(|t| {
            let action = match (t.action, t.applied) {
                (TriageAction::Delete, true) => "deleted",
                (TriageAction::Delete, false) => "delete",
                (TriageAction::SendBack, true) => "sent back",
                (TriageAction::SendBack, false) => "send back",
                (TriageAction::Leave, _) => "leave",
            };
            let jobs: Vec<&str> = t.job_ids.iter().map(JobId::as_str).collect();
            vec![t.message_id.clone(), jobs.join(" "), action.to_owned(), t.why.clone()]
        })
        .collect();
    let mut out = human::table(&["MESSAGE", "JOB", "ACTION", "WHY"], &cells);
    if !apply && triaged.iter().any(|t| t.action != TriageAction::Leave) {
        out.push_str("a dry run: nothing changed; --apply does the deletes and send-backs\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(state: JobState) -> JobRow {
        JobRow {
            job_id: crate::job::job_id("e"),
            event_id: Some("evt-1".into()),
            file_name: "PlannedOrders-PF".into(),
            target: "PF2".into(),
            received_at: OffsetDateTime::UNIX_EPOCH,
            state,
            rows: Some(2500),
            bytes: Some(123_456),
            delivered: vec!["PlannedOrders-PF.csv".into()],
            attempts: Some(1),
            failure: None,
            failure_message: None,
        }
    }

    #[test]
    fn the_jobs_table_is_aligned_and_coloured_only_on_a_terminal() {
        let now = OffsetDateTime::UNIX_EPOCH + time::Duration::minutes(3);
        let plain = jobs(&[row(JobState::Delivered)], now, false, false);
        let lines: Vec<&str> = plain.lines().collect();
        assert_eq!(lines.len(), 2, "{plain}");
        assert!(lines[1].contains("3 min ago") && lines[1].contains("123.5 kB") && lines[1].contains("delivered"));
        assert_eq!(lines[0].find("STATE"), lines[1].find("delivered"), "columns line up:\n{plain}");
        assert!(!plain.contains('\x1b'));
        assert!(jobs(&[row(JobState::Failed)], now, false, true).contains("\x1b[31m"));
        let json: Value = serde_json::from_str(&jobs(&[row(JobState::Delivered)], now, true, true)).unwrap();
        assert_eq!(json[0]["state"], "delivered");
    }
}
