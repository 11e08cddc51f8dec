//! Every `maestro-relay` command of docs/runbook.md, run exactly as written (with `JOBID`
//! standing for a job of this test) through the real binary against the local stack's
//! parts: a command the runbook tells an operator to type must work.

use crate::helpers::{sqs_event_for, TestApp, ROOT};

/// The `maestro-relay` lines of the runbook's `sh` blocks, each as its words (a trailing
/// `# comment` dropped, as the shell drops it).
fn documented_commands() -> Vec<Vec<String>> {
    let runbook = std::fs::read_to_string(format!("{ROOT}/docs/runbook.md")).expect("docs/runbook.md");
    let mut commands = Vec::new();
    let mut in_sh = false;
    for line in runbook.lines() {
        match line.trim() {
            "```sh" => in_sh = true,
            "```" => in_sh = false,
            text if in_sh && text.starts_with("maestro-relay ") => {
                let words = text.split_whitespace().take_while(|w| !w.starts_with('#'));
                commands.push(words.skip(1).map(str::to_owned).collect());
            }
            _ => {}
        }
    }
    commands
}

#[tokio::test]
async fn every_maestro_relay_command_of_the_runbook_runs_as_written_on_the_local_stack() {
    let app = TestApp::start(&["--rows", "40"]).await;
    let job_id = Box::pin(app.accepted_job("webhook-http-api-pf.json")).await;
    Box::pin(app.worker().handle_json(&sqs_event_for(&job_id, "m-1"), app.deadline())).await.expect("an SQS answer");
    // And one that failed for good, on the dead-letter queue: WP2's host key is wrong.
    let wp2 = app.env["SFTP_SECRET_ID_WP2"].clone();
    let mut wrong = app.sshd.secret("WP2");
    wrong["host_key_sha256"] = serde_json::json!("SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
    app.set_secret(&wp2, wrong).await;
    let failed = Box::pin(app.accepted_job("webhook-http-api-wp.json")).await;
    Box::pin(app.worker().handle_json(&sqs_event_for(&failed, "m-2"), app.deadline())).await.expect("an SQS answer");
    let dir = tempfile::tempdir().expect("dir");
    let env = app.env_file(dir.path());

    let commands = documented_commands();
    assert!(commands.len() >= 15, "the runbook's commands: {commands:?}");
    for subcommand in ["jobs", "show", "dlq", "rerun"] {
        assert!(commands.iter().any(|c| c[0] == subcommand), "the runbook never runs {subcommand}");
    }
    let mut failures = Vec::new();
    for command in &commands {
        // SAP took the file of the last delivery: a re-send finds the folder as SAP leaves it.
        for name in app.sshd.files("PF2") {
            std::fs::remove_file(app.sshd.folder("PF2").join(name)).expect("take the file");
        }
        let args: Vec<String> = command.iter().map(|w| w.replace("JOBID", &job_id)).collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, out, err) = app.tool(&env, &args);
        // Where the runbook looks for failures, the failed job shows.
        let about_failures = args == ["dlq"] || (args[0] == "jobs" && args.contains(&"failed"));
        if code != 0 || out.trim().is_empty() || (about_failures && !out.contains(&failed)) {
            failures.push(format!("maestro-relay {}: exit {code}\n{out}{err}", command.join(" ")));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
