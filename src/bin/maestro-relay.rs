//! `maestro-relay`, the operator's tool (not deployed): every job's state, one job's story,
//! the dead-letter queue triaged, a job run again — against a deployed stack (`--stack
//! NAME`, its outputs name the bucket, queues and worker) or the local one (`--env-file
//! .local/stack/env`). docs/runbook.md says which command answers which alarm.
#![recursion_limit = "256"]

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use maestro_relay::aws::{sdk_config, S3Store, SecretsManager, SqsQueue};
use maestro_relay::job::{keys, JobId};
use maestro_relay::secrets::{parse_secret, SecretSource, WebhookCredentials};
use maestro_relay::telemetry;
use maestro_relay::toolbox::{self, human, JobRow, JobState};
use maestro_relay::worker::{RerunRequest, WorkerEvent, WorkerResponse};
use time::OffsetDateTime;

#[derive(Parser)]
#[command(name = "maestro-relay", about = "What happened to a batch, the dead-letter queue, a job run again")]
struct Cli {
    /// The deployed stack: bucket, queues and worker from its outputs (AWS credentials and
    /// region as for the AWS CLI).
    #[arg(long, global = true, env = "MAESTRO_RELAY_STACK")]
    stack: Option<String>,
    /// The local stack's environment file (`make stack-up` writes .local/stack/env).
    #[arg(long, global = true, env = "MAESTRO_RELAY_ENV_FILE", conflicts_with = "stack")]
    env_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// One line per job received in the window, newest first.
    Jobs {
        /// How far back: 90s, 30m, 24h, 7d.
        #[arg(long, default_value = "24h")]
        since: String,
        /// all, delivered, skipped, failed, retrying, running, pending or stranded.
        #[arg(long, default_value = "all")]
        state: String,
        #[arg(long)]
        target: Option<String>,
        /// A job with no outcome this long after it was received is stranded.
        #[arg(long, default_value = "1h")]
        stranded_after: String,
        #[arg(long)]
        json: bool,
    },
    /// Everything kept of one job: by job id, webhook-id or eventId.
    Show {
        job: String,
        #[arg(long)]
        json: bool,
    },
    /// Every dead-letter message with its job, its reason and what to do (a dry run
    /// unless --apply).
    Dlq {
        #[arg(long)]
        apply: bool,
        #[arg(long)]
        json: bool,
    },
    /// Runs a job again through the worker and prints the outcome (--resend: a delivered
    /// job once more, under records of its own).
    Rerun {
        job: String,
        /// Export again instead of sending the staged copy.
        #[arg(long)]
        fresh_export: bool,
        /// Deliver a delivered job once more, under records of its own.
        #[arg(long)]
        resend: bool,
        /// Ask again for an earlier re-send (its answer printed the id): it delivers once.
        #[arg(long, requires = "resend")]
        resend_id: Option<String>,
        /// Deliver even though a newer batch claimed the destination (this job only).
        #[arg(long)]
        allow_stale: bool,
        /// Run the job in this process with the worker's configuration from the
        /// environment (always so on the local stack, which has no Lambda).
        #[arg(long)]
        here: bool,
    },
    /// The local stack only: an event of events/ signed now with a fresh webhook-id, handed
    /// to the webhook in this process; prints its answer (the job id to follow).
    SendTest {
        #[arg(default_value = "events/webhook-http-api-pf.json")]
        event: PathBuf,
        /// Print the signed event instead of sending it: for `scripts/lambda_rie.py` or
        /// `sam local invoke -e` (the signature holds for five minutes).
        #[arg(long)]
        print_event: bool,
    },
}

/// Where the records are: the bucket, the queues, the worker function.
struct Place {
    sdk: aws_config::SdkConfig,
    bucket: String,
    jobs_queue_url: String,
    dead_letter_queue_url: String,
    worker_function: Option<String>,
    /// The local stack (`--env-file`): no Lambda; the functions run in this process.
    local: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Stdout is the tool's answer; a function run in this process logs on stderr.
    telemetry::write_to_stderr();
    // Before any thread: the file's variables become this process's environment, read by
    // the AWS SDK and, for `rerun --here`, by the worker's configuration.
    if let Some(path) = &cli.env_file {
        if let Err(why) = load_env_file(path) {
            eprintln!("maestro-relay: {why}");
            return ExitCode::from(2);
        }
    }
    telemetry::init_logging_at("warn");
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("maestro-relay: cannot start: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(why) => {
            eprintln!("maestro-relay: {why}");
            ExitCode::FAILURE
        }
    }
}

fn load_env_file(path: &std::path::Path) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let vars = toolbox::env_file::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    for (name, value) in vars {
        std::env::set_var(name, value);
    }
    Ok(())
}

async fn run(cli: Cli) -> Result<ExitCode, String> {
    let place = place(&cli).await?;
    let store = S3Store::from_sdk_config(&place.sdk, &place.bucket);
    let now = OffsetDateTime::now_utc();
    match cli.command {
        Command::Jobs { since, state, target, stranded_after, json } => {
            let since = human::parse_since(&since).ok_or(format!("--since {since:?}: say 90s, 30m, 24h or 7d"))?;
            let stranded = human::parse_since(&stranded_after)
                .ok_or(format!("--stranded-after {stranded_after:?}: say 90s, 30m, 24h or 7d"))?;
            let wanted = match state.as_str() {
                "all" => None,
                other => Some(JobState::parse(other).ok_or(format!(
                    "--state {other:?}: say all, {}",
                    JobState::ALL.map(JobState::as_str).join(", ")
                ))?),
            };
            let rows = toolbox::job_rows(&store, Some(now - since), now, stranded).await.map_err(|e| e.chain())?;
            let rows: Vec<JobRow> = rows
                .into_iter()
                .filter(|r| wanted.is_none_or(|s| r.state == s))
                .filter(|r| target.as_deref().is_none_or(|t| r.target.eq_ignore_ascii_case(t)))
                .collect();
            print!("{}", toolbox::print::jobs(&rows, now, json, std::io::stdout().is_terminal()));
        }
        Command::Show { job, json } => return show(&store, &place, &job, json).await,
        Command::Dlq { apply, json } => {
            let queue = SqsQueue::from_sdk_config(&place.sdk, &place.jobs_queue_url, &place.dead_letter_queue_url);
            let (triaged, read) = toolbox::dlq::work(&queue, &store, apply).await;
            print!("{}", toolbox::print::triage(&triaged, apply, json));
            // What was done is printed above; then why the rest was not looked at.
            read.map_err(|e| format!("the dead-letter queue could not be read to its end: {}", e.chain()))?;
        }
        Command::Rerun { job, fresh_export, resend, resend_id, allow_stale, here } => {
            let job_id = toolbox::find_job(&store, &job).await.map_err(|e| e.chain())?.unwrap_or_else(|| {
                // Sent as asked: the worker answers "not run" for a job it cannot find.
                JobId::parse(&job).unwrap_or_else(|| maestro_relay::job::job_id(&job))
            });
            let request = RerunRequest {
                job_key: keys::manifest(&job_id),
                fresh_export,
                resend,
                resend_id: resend.then(|| {
                    resend_id.unwrap_or_else(|| format!("cli-{}-{:04x}", now.unix_timestamp(), fastrand::u16(..)))
                }),
                allow_stale,
                requested_by: Some(requested_by()),
            };
            return rerun(&place, request, here || place.local).await;
        }
        Command::SendTest { event, print_event } => return send_test(&place, &event, print_event).await,
    }
    Ok(ExitCode::SUCCESS)
}

async fn place(cli: &Cli) -> Result<Place, String> {
    let sdk = sdk_config().await;
    let env = |name: &str| std::env::var(name).ok();
    match (&cli.stack, &cli.env_file) {
        (Some(stack), _) => {
            let outputs = stack_outputs(&sdk, stack).await?;
            let output = |name: &str| {
                outputs
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.clone())
                    .ok_or(format!("stack {stack} has no output {name}: deploy the current template.yaml"))
            };
            Ok(Place {
                bucket: output("StagingBucketName")?,
                jobs_queue_url: output("JobsQueueUrl")?,
                dead_letter_queue_url: output("DeadLetterQueueUrl")?,
                worker_function: output("WorkerFunctionName").ok(),
                local: false,
                sdk,
            })
        }
        (None, Some(path)) => {
            let need = |name: &str| env(name).ok_or(format!("{} sets no {name}", path.display()));
            Ok(Place {
                bucket: need("STAGING_BUCKET")?,
                jobs_queue_url: need("JOBS_QUEUE_URL")?,
                dead_letter_queue_url: need("DEAD_LETTER_QUEUE_URL")?,
                worker_function: None,
                local: true,
                sdk,
            })
        }
        (None, None) => Err("say where: --stack NAME (a deployed stack) or --env-file .local/stack/env".to_owned()),
    }
}

async fn stack_outputs(sdk: &aws_config::SdkConfig, stack: &str) -> Result<Vec<(String, String)>, String> {
    let client = aws_sdk_cloudformation::Client::new(sdk);
    let described =
        client.describe_stacks().stack_name(stack).send().await.map_err(|e| {
            format!("describing stack {stack}: {}", aws_sdk_cloudformation::error::DisplayErrorContext(e))
        })?;
    let found = described.stacks().first().ok_or(format!("no stack named {stack}"))?;
    Ok(found
        .outputs()
        .iter()
        .filter_map(|o| Some((o.output_key()?.to_owned(), o.output_value()?.to_owned())))
        .collect())
}

fn requested_by() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "someone".to_owned());
    let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_owned()).unwrap_or_default();
    if host.is_empty() {
        format!("{user} (maestro-relay)")
    } else {
        format!("{user}@{host} (maestro-relay)")
    }
}

async fn show(store: &S3Store, place: &Place, job: &str, json: bool) -> Result<ExitCode, String> {
    let Some(job_id) = toolbox::find_job(store, job).await.map_err(|e| e.chain())? else {
        eprintln!("maestro-relay: no job {job:?}: not a job id, nor a webhook-id or eventId of a received job");
        return Ok(ExitCode::from(3));
    };
    let story = toolbox::story(store, &job_id).await.map_err(|e| e.chain())?;
    let queue = SqsQueue::from_sdk_config(&place.sdk, &place.jobs_queue_url, &place.dead_letter_queue_url);
    // The records say what happened; the dead-letter queue only adds to it.
    let dead_letters = toolbox::dlq::of_job(&queue, &job_id)
        .await
        .unwrap_or_else(|err| vec![format!("(the dead-letter queue could not be read: {})", err.chain())]);
    let query = toolbox::jobs::logs_query(&job_id);
    print!("{}", toolbox::print::story(&story, &dead_letters, &query, json));
    Ok(ExitCode::SUCCESS)
}

async fn rerun(place: &Place, request: RerunRequest, here: bool) -> Result<ExitCode, String> {
    let resend_id = request.resend_id.clone();
    let answer = if here {
        let config = maestro_relay::config::WorkerConfig::from_env().map_err(|e| e.to_string())?;
        let worker = maestro_relay::app::worker(config, &place.sdk);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15 * 60);
        match worker.handle_event(WorkerEvent::Console(request), deadline).await {
            Ok(WorkerResponse::Console(outcome)) => serde_json::to_value(outcome).map_err(|e| e.to_string())?,
            Ok(other) => serde_json::to_value(other).map_err(|e| e.to_string())?,
            Err(err) => {
                serde_json::json!({"status": "failed", "class": err.class, "step": err.step, "error": err.chain()})
            }
        }
    } else {
        invoke(place, &request).await?
    };
    let mut answer = answer;
    if let (Some(id), Some(object)) = (&resend_id, answer.as_object_mut()) {
        // To ask again for this same re-send (it delivers once), not for a new one.
        object.insert("resendId".to_owned(), serde_json::json!(id));
    }
    println!("{}", serde_json::to_string_pretty(&answer).map_err(|e| e.to_string())?);
    let delivered = matches!(answer["status"].as_str(), Some("delivered" | "already-delivered" | "skipped"));
    Ok(if delivered { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// The worker run by Lambda `Invoke` with the re-run event, its answer as JSON.
async fn invoke(place: &Place, request: &RerunRequest) -> Result<serde_json::Value, String> {
    let function = place.worker_function.as_deref().ok_or(
        "no worker function: the stack has no WorkerFunctionName output (deploy the current template.yaml), or \
         use --here",
    )?;
    let payload = serde_json::to_vec(request).map_err(|e| e.to_string())?;
    let client = aws_sdk_lambda::Client::new(&place.sdk);
    let invoked = client
        .invoke()
        .function_name(function)
        .payload(aws_sdk_lambda::primitives::Blob::new(payload))
        .send()
        .await
        .map_err(|e| format!("invoking {function}: {}", aws_sdk_lambda::error::DisplayErrorContext(e)))?;
    let body = invoked.payload().map(|p| p.as_ref().to_vec()).unwrap_or_default();
    let answer: serde_json::Value = serde_json::from_slice(&body)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&body).into_owned()));
    match invoked.function_error() {
        Some(kind) => Ok(serde_json::json!({"status": "failed", "functionError": kind, "error": answer})),
        None => Ok(answer),
    }
}

/// The local stack's webhook, in this process, on a signed copy of `event_file`.
async fn send_test(place: &Place, event_file: &std::path::Path, print_event: bool) -> Result<ExitCode, String> {
    if !place.local {
        return Err(
            "send-test is for the local stack (--env-file): a deployed stack's webhooks come from Maestro".into()
        );
    }
    let text = std::fs::read_to_string(event_file).map_err(|e| format!("reading {}: {e}", event_file.display()))?;
    let event: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{} is not JSON: {e}", event_file.display()))?;
    let config = maestro_relay::config::WebhookConfig::from_env().map_err(|e| e.to_string())?;
    let secret_id = std::env::var("WEBHOOK_SECRET_ID").map_err(|_| "the env file sets no WEBHOOK_SECRET_ID")?;
    let secret = SecretsManager::from_sdk_config(&place.sdk).secret_string(&secret_id).await.map_err(|e| e.chain())?;
    let credentials: WebhookCredentials = parse_secret(&secret_id, &secret).map_err(|e| e.chain())?;
    let whsec = credentials.hmac_secrets.first().ok_or(format!("{secret_id} holds no hmac_secrets"))?;
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let webhook_id = toolbox::send_test::fresh_webhook_id(now);
    let (headers, body) = toolbox::send_test::signed_request(&event, whsec, &webhook_id, now)?;
    if print_event {
        let signed = toolbox::send_test::signed_event(event, &headers);
        println!("{}", serde_json::to_string(&signed).map_err(|e| e.to_string())?);
        return Ok(ExitCode::SUCCESS);
    }
    let answer = maestro_relay::app::webhook(config, &place.sdk).handle(&headers, &body).await;
    let document =
        serde_json::json!({"status": answer.status.as_u16(), "webhookId": webhook_id, "answer": answer.body});
    println!("{}", serde_json::to_string_pretty(&document).map_err(|e| e.to_string())?);
    Ok(if answer.status.is_success() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
