//! Configuration from environment variables, read once at cold start into each part's own
//! settings type; every missing or invalid variable is reported by name before anything
//! runs. Imported only by the wiring (`app`).

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::csv_out::{ColumnMapping, CsvOptions, Encoding, FileFormat, LineEnding, Quoting};
use crate::delivery::sftp::SftpOptions;
use crate::error::{Error, Step};
use crate::export::kinaxis::{KinaxisOptions, PagingStyle};
use crate::job::{ExistingFilePolicy, FileNameTemplate, Profile, Profiles, TriggerContent, TriggerFile};
use crate::retry::RetryPolicy;
use crate::routing::{RoutingTable, Target};
use crate::webhook::auth::AuthMode;
use crate::webhook::policy::{self, AllowList, MAX_WORKSHEETS};
use crate::webhook::schedule::{ScheduleMode, ScheduleSettings};
use crate::webhook::WebhookSettings;
use crate::worker::stream::StreamOptions;
use crate::worker::{PickupSettings, QueueSettings, StaleBatch, WorkerSettings, RECORD_OUTCOME_BUDGET};

/// Reads variables through `lookup` and collects every problem, so one start-up failure
/// lists them all.
struct Env<'a> {
    lookup: &'a dyn Fn(&str) -> Option<String>,
    problems: Vec<String>,
}

impl<'a> Env<'a> {
    fn new(lookup: &'a dyn Fn(&str) -> Option<String>) -> Self {
        Self { lookup, problems: Vec::new() }
    }

    fn get(&self, name: &str) -> Option<String> {
        (self.lookup)(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
    }

    fn required(&mut self, name: &str) -> String {
        self.get(name).unwrap_or_else(|| {
            self.problems.push(format!("{name} is required"));
            String::new()
        })
    }

    fn parsed<T: FromStr>(&mut self, name: &str, default: T) -> T
    where
        T::Err: std::fmt::Display,
    {
        match self.get(name) {
            None => default,
            Some(raw) => raw.parse().unwrap_or_else(|e| {
                self.problems.push(format!("{name}={raw:?} is invalid: {e}"));
                default
            }),
        }
    }

    fn seconds(&mut self, name: &str, default: u64) -> Duration {
        Duration::from_secs(self.parsed(name, default))
    }

    fn millis(&mut self, name: &str, default: u64) -> Duration {
        Duration::from_millis(self.parsed(name, default))
    }

    fn check(&mut self, ok: bool, problem: impl FnOnce() -> String) {
        if !ok {
            self.problems.push(problem());
        }
    }

    fn finish<T>(mut self, value: T) -> Result<T, Error> {
        // A global variable read for every profile reports its problem once.
        let mut seen = std::collections::BTreeSet::new();
        self.problems.retain(|p| seen.insert(p.clone()));
        if self.problems.is_empty() {
            Ok(value)
        } else {
            Err(Error::permanent(Step::Config, format!("invalid configuration: {}", self.problems.join("; "))))
        }
    }
}

/// `STACK_NAME`, set by the template to the stack's name; `local` elsewhere.
fn stack_name(env: &Env<'_>) -> String {
    env.get("STACK_NAME").unwrap_or_else(|| "local".to_owned())
}

fn routes(env: &mut Env<'_>) -> RoutingTable {
    let suffixes = env.get("ROUTES").unwrap_or_else(|| "PF=PF2,WP=WP2".to_owned());
    let overrides = env.get("ROUTE_OVERRIDES").unwrap_or_default();
    RoutingTable::parse(&suffixes, &overrides).unwrap_or_else(|e| {
        env.problems.push(format!("ROUTES/ROUTE_OVERRIDES are invalid: {e}"));
        RoutingTable::default()
    })
}

/// The webhook function's configuration.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub staging_bucket: String,
    pub secret_cache_ttl: Duration,
    pub settings: WebhookSettings,
}

impl WebhookConfig {
    /// Variables without a default: the template must set each on the webhook function.
    pub const REQUIRED_VARS: &'static [&'static str] = &["STAGING_BUCKET", "WEBHOOK_SECRET_ID"];

    pub fn from_env() -> Result<Self, Error> {
        Self::from_lookup(&|name| std::env::var(name).ok())
    }

    pub fn from_lookup(lookup: &dyn Fn(&str) -> Option<String>) -> Result<Self, Error> {
        let mut env = Env::new(lookup);
        let staging_bucket = env.required("STAGING_BUCKET");
        let secret_id = env.required("WEBHOOK_SECRET_ID");
        let auth_mode = env.parsed("WEBHOOK_AUTH_MODE", AuthMode::Hmac);
        let max_body_bytes = env.parsed("WEBHOOK_MAX_BODY_BYTES", 256 * 1024);
        let timestamp_tolerance = env.seconds("WEBHOOK_TIMESTAMP_TOLERANCE_SECS", 300);
        let secret_cache_ttl = env.seconds("SECRET_CACHE_TTL_SECS", 300);
        let routes = routes(&mut env);
        let stack_name = stack_name(&env);
        let default_worksheets: Vec<String> = env
            .get("WORKSHEETS")
            .map(|list| list.split(',').map(|w| w.trim().to_owned()).filter(|w| !w.is_empty()).collect())
            .unwrap_or_default();
        env.check(default_worksheets.len() <= MAX_WORKSHEETS, || {
            format!("WORKSHEETS names {} worksheets; a job may have at most {MAX_WORKSHEETS}", default_worksheets.len())
        });
        let allowed_sources =
            policy::parse_cidrs(&env.get("ALLOWED_SOURCE_CIDRS").unwrap_or_default()).unwrap_or_else(|e| {
                env.problems.push(format!("ALLOWED_SOURCE_CIDRS: {e}"));
                Vec::new()
            });
        let allow_list = match env.get("ALLOWED_REQUESTS") {
            None => AllowList::default(),
            Some(json) => AllowList::parse(&json, &routes.targets()).unwrap_or_else(|e| {
                env.problems.push(format!("ALLOWED_REQUESTS {e}"));
                AllowList::default()
            }),
        };
        // 0 (the template's default) is no budget, as is leaving it out.
        let daily_job_budget = Some(env.parsed::<u32>("DAILY_JOB_BUDGET", 0)).filter(|n| *n > 0);
        let daily_target_budget = Some(env.parsed::<u32>("DAILY_TARGET_BUDGET", 0)).filter(|n| *n > 0);
        let schedule = schedule(&mut env);
        let settings = WebhookSettings {
            secret_id,
            auth_mode,
            max_body_bytes,
            timestamp_tolerance,
            routes,
            stack_name,
            default_worksheets,
            allowed_sources,
            allow_list,
            daily_job_budget,
            daily_target_budget,
            schedule,
        };
        warn_of_a_refused_schedule(&settings);
        env.finish(Self { staging_bucket, secret_cache_ttl, settings })
    }
}

/// The scheduled request through the very checks each slot repeats, so a typo shows at the
/// start, not at the first slot hours later; logged, not fatal: a later change of the
/// allow-list or routes that refuses it must not take the webhook down with the schedule
/// (each slot refuses it again, to the schedule's dead-letter queue).
fn warn_of_a_refused_schedule(settings: &WebhookSettings) {
    let Some(schedule) = &settings.schedule else { return };
    if let Err(refused) = crate::webhook::checked_request(settings, schedule.request.as_bytes()) {
        let field = refused.body["field"].as_str().unwrap_or("body");
        let detail = refused.body["detail"].as_str().unwrap_or("");
        tracing::error!(
            field,
            detail,
            "SCHEDULE_REQUEST is refused as a webhook body would be: every scheduled start will fail"
        );
    }
}

/// A catch-up looks back at most a week (a weekly schedule).
const MAX_CATCH_UP_WINDOW_MINUTES: u64 = 7 * 24 * 60;

/// `SCHEDULE_MODE` and what it needs: `None` when off (the other variables are then not read).
fn schedule(env: &mut Env) -> Option<ScheduleSettings> {
    let mode = env.parsed("SCHEDULE_MODE", ScheduleMode::Off);
    if mode == ScheduleMode::Off {
        return None;
    }
    let request = env.required("SCHEDULE_REQUEST");
    // Only a catch-up looks back; 0 (left out) cannot be its window.
    let minutes: u64 =
        if mode == ScheduleMode::CatchUp { env.parsed("SCHEDULE_CATCH_UP_WINDOW_MINUTES", 0) } else { 0 };
    env.check(mode != ScheduleMode::CatchUp || (1..=MAX_CATCH_UP_WINDOW_MINUTES).contains(&minutes), || {
        format!(
            "SCHEDULE_CATCH_UP_WINDOW_MINUTES={minutes} under SCHEDULE_MODE=catch-up must be 1 to \
             {MAX_CATCH_UP_WINDOW_MINUTES} (a week): the minutes back to the schedule's previous slot"
        )
    });
    Some(ScheduleSettings { mode, request, catch_up_window: Duration::from_secs(minutes * 60) })
}

/// The worker function's configuration: what the wiring builds its parts from.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub staging_bucket: String,
    pub secret_cache_ttl: Duration,
    pub kinaxis: KinaxisOptions,
    pub sftp: SftpOptions,
    pub worker: WorkerSettings,
    /// The EventBridge bus delivery events go to (`EVENT_BUS_NAME`); none when unset.
    pub event_bus_name: Option<String>,
}

impl WorkerConfig {
    /// Variables without a default: the template must set each on the worker function,
    /// and `SFTP_SECRET_ID_<TARGET>` for every target of `ROUTES` and `ROUTE_OVERRIDES`.
    pub const REQUIRED_VARS: &'static [&'static str] =
        &["STAGING_BUCKET", "KINAXIS_SECRET_ID", "KINAXIS_BASE_URL", "JOBS_QUEUE_URL", "DEAD_LETTER_QUEUE_URL"];

    pub fn from_env() -> Result<Self, Error> {
        Self::from_lookup(&|name| std::env::var(name).ok())
    }

    pub fn from_lookup(lookup: &dyn Fn(&str) -> Option<String>) -> Result<Self, Error> {
        let mut env = Env::new(lookup);
        let staging_bucket = env.required("STAGING_BUCKET");
        let kinaxis_secret_id = env.required("KINAXIS_SECRET_ID");
        let kinaxis = kinaxis_options(&mut env);
        let routes = routes(&mut env);
        let sftp_secret_ids =
            routes.targets().into_iter().map(|t| (t.clone(), env.required(&format!("SFTP_SECRET_ID_{t}")))).collect();
        let profiles = profiles(&mut env, &routes);
        let sftp = sftp_options(&mut env);
        let worker = WorkerSettings {
            stack_name: stack_name(&env),
            kinaxis_secret_id,
            sftp_secret_ids,
            retry: retry_policy(&mut env),
            deadline_margin: deadline_margin(&mut env, &sftp),
            queue: queue_settings(&mut env),
            stale_batch: env.parsed("STALE_BATCH", StaleBatch::Fail),
            min_rows: env.parsed("MIN_ROWS", 1),
            lease_grace: env.seconds("LEASE_GRACE_SECS", 60),
            profiles,
            spool_dir: env.get("SPOOL_DIR").map(PathBuf::from).unwrap_or_else(std::env::temp_dir),
            stream: stream_options(&mut env),
            existing_file: env.parsed("SFTP_EXISTING_FILE", ExistingFilePolicy::Fail),
            destination_poll: crate::delivery::destination::HOLDER_POLL,
            pickup: pickup_settings(&mut env, &routes),
        };
        let secret_cache_ttl = env.seconds("SECRET_CACHE_TTL_SECS", 300);
        let event_bus_name = env.get("EVENT_BUS_NAME");
        env.finish(Self { staging_bucket, secret_cache_ttl, kinaxis, sftp, worker, event_bus_name })
    }
}

/// `http://` to 127.0.0.0/8, `::1` or `localhost`: the simulator's, never a real Kinaxis.
fn is_loopback_http(url: &str) -> bool {
    let Ok(parsed) = reqwest::Url::parse(url) else { return false };
    let host = parsed.host_str().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    parsed.scheme() == "http"
        && (host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback()))
}

fn kinaxis_options(env: &mut Env<'_>) -> KinaxisOptions {
    let base_url = env.required("KINAXIS_BASE_URL");
    env.check(base_url.is_empty() || base_url.starts_with("https://") || is_loopback_http(&base_url), || {
        format!("KINAXIS_BASE_URL={base_url:?} must start with https:// (http:// only for a loopback simulator)")
    });
    let paging = match env.get("KINAXIS_PAGING").as_deref() {
        None | Some("query") => PagingStyle::Query,
        Some("path") => PagingStyle::Path,
        Some(other) => {
            env.problems.push(format!("KINAXIS_PAGING={other:?} is not query or path"));
            PagingStyle::Query
        }
    };
    let kinaxis = KinaxisOptions {
        base_url,
        page_size: env.parsed("KINAXIS_PAGE_SIZE", 5000),
        bulk_page_size: env.parsed("KINAXIS_BULK_PAGE_SIZE", 20_000),
        pages_in_flight: env.parsed("KINAXIS_PAGES_IN_FLIGHT", 4),
        connect_timeout: env.seconds("KINAXIS_CONNECT_TIMEOUT_SECS", 10),
        request_timeout: env.seconds("KINAXIS_REQUEST_TIMEOUT_SECS", 120),
        paging,
    };
    env.check(kinaxis.page_size >= 1 && kinaxis.bulk_page_size >= 1 && kinaxis.pages_in_flight >= 1, || {
        "KINAXIS_PAGE_SIZE, KINAXIS_BULK_PAGE_SIZE and KINAXIS_PAGES_IN_FLIGHT must be at least 1".to_owned()
    });
    kinaxis
}

fn retry_policy(env: &mut Env<'_>) -> RetryPolicy {
    let retry = RetryPolicy {
        retries: env.parsed("RETRY_MAX", 3),
        initial_delay: env.millis("RETRY_INITIAL_MS", 30_000),
        factor: env.parsed("RETRY_FACTOR", 2.0),
        max_delay: env.millis("RETRY_MAX_DELAY_MS", 300_000),
        jitter: env.parsed("RETRY_JITTER", 0.2),
    };
    env.check(retry.factor >= 1.0 && (0.0..=1.0).contains(&retry.jitter), || {
        "RETRY_FACTOR must be >= 1 and RETRY_JITTER within 0..1".to_owned()
    });
    retry
}

fn profiles(env: &mut Env<'_>, routes: &RoutingTable) -> Profiles {
    Profiles {
        default: profile(&mut Scoped::new(env, None)),
        targets: routes.targets().into_iter().map(|t| (t.clone(), profile(&mut Scoped::new(env, Some(&t))))).collect(),
    }
}

/// The longest a target's pickup limit may be: the longest lookback.
const MAX_PICKUP_SLA_MINUTES: u64 = 14 * 24 * 60;

/// The SAP pickup watchdog: how far back it looks, and each target's limit
/// (`PICKUP_SLA_MINUTES[_<TARGET>]`, 0 = not watched).
fn pickup_settings(env: &mut Env<'_>, routes: &RoutingTable) -> PickupSettings {
    let lookback_hours: u64 = env.parsed("PICKUP_LOOKBACK_HOURS", 24);
    env.check((1..=24 * 14).contains(&lookback_hours), || {
        format!("PICKUP_LOOKBACK_HOURS={lookback_hours} must be 1 to 336 (two weeks)")
    });
    let sla = routes
        .targets()
        .into_iter()
        .map(|target| {
            let mut scoped = Scoped::new(env, Some(&target));
            let minutes: u64 = scoped.parsed("PICKUP_SLA_MINUTES", 60);
            if minutes > MAX_PICKUP_SLA_MINUTES {
                scoped.problem(format!("PICKUP_SLA_MINUTES for {target} is {minutes}: at most 20160 (two weeks)"));
            }
            (target, Duration::from_secs(minutes.min(MAX_PICKUP_SLA_MINUTES) * 60))
        })
        .collect();
    PickupSettings { lookback: Duration::from_secs(lookback_hours * 3600), sla }
}

fn sftp_options(env: &mut Env<'_>) -> SftpOptions {
    SftpOptions {
        connect_timeout: env.seconds("SFTP_CONNECT_TIMEOUT_SECS", 15),
        io_timeout: env.seconds("SFTP_IO_TIMEOUT_SECS", 60),
        keepalive_interval: env.seconds("SFTP_KEEPALIVE_SECS", 15),
        write_chunk: env.parsed("SFTP_WRITE_CHUNK_BYTES", 2 * 1024 * 1024),
        create_dir: env.parsed("SFTP_CREATE_DIR", false),
    }
}

fn deadline_margin(env: &mut Env<'_>, sftp: &SftpOptions) -> Duration {
    let deadline_margin = env.seconds("RETRY_DEADLINE_MARGIN_SECS", 90);
    // Async steps are cut at the deadline; a blocking SFTP call is not, and may run one
    // whole SFTP_IO_TIMEOUT_SECS past it. The margin must cover that and the writes of
    // the failure record and metric after it.
    let longest_uncut = sftp.io_timeout + RECORD_OUTCOME_BUDGET;
    env.check(deadline_margin >= longest_uncut, || {
        format!(
            "RETRY_DEADLINE_MARGIN_SECS={} is shorter than SFTP_IO_TIMEOUT_SECS={} plus {} s to record the \
             outcome: a job cut by the deadline could die without its failure record",
            deadline_margin.as_secs(),
            sftp.io_timeout.as_secs(),
            RECORD_OUTCOME_BUDGET.as_secs()
        )
    });
    deadline_margin
}

/// Checks of a job still held by another run on its queue's last receive: a quarter of an
/// hour apart (SQS's longest delay), past any lease (15 minutes plus the grace).
const LEASE_CHECKS: u32 = 4;

fn queue_settings(env: &mut Env<'_>) -> QueueSettings {
    let queue = QueueSettings {
        jobs_queue_url: env.required("JOBS_QUEUE_URL"),
        dead_letter_queue_url: env.required("DEAD_LETTER_QUEUE_URL"),
        max_receive_count: env.parsed("MAX_RECEIVE_COUNT", 5),
        visibility_delays: visibility_delays(env),
        lease_checks: LEASE_CHECKS,
    };
    env.check(queue.max_receive_count >= 1, || "MAX_RECEIVE_COUNT must be at least 1".to_owned());
    queue
}

fn stream_options(env: &mut Env<'_>) -> StreamOptions {
    let defaults = StreamOptions::default();
    let part_mib: usize = env.parsed("STREAM_PART_MIB", defaults.part_bytes >> 20);
    let stream = StreamOptions {
        part_bytes: part_mib << 20,
        parts_in_flight: env.parsed("STREAM_PARTS_IN_FLIGHT", defaults.parts_in_flight),
        stall: env.millis("STREAM_STALL_MS", defaults.stall.as_millis() as u64),
        call_timeout: env.seconds("STREAM_CALL_TIMEOUT_SECS", defaults.call_timeout.as_secs()),
        sftp: env.parsed("STREAM_SFTP", defaults.sftp),
        ..defaults
    };
    // S3 refuses parts under 5 MiB but the last; 10,000 parts of 5 GiB bound the rest.
    env.check((5..=5120).contains(&part_mib), || {
        format!("STREAM_PART_MIB={part_mib} must be 5 to 5120 (S3's part sizes)")
    });
    env.check(stream.parts_in_flight >= 1 && !stream.call_timeout.is_zero(), || {
        "STREAM_PARTS_IN_FLIGHT and STREAM_CALL_TIMEOUT_SECS must be at least 1".to_owned()
    });
    stream
}

fn visibility_delays(env: &mut Env<'_>) -> Vec<Duration> {
    let raw = env.get("RETRY_VISIBILITY_SECS").unwrap_or_else(|| "300,1200,3600".to_owned());
    let parsed: Result<Vec<Duration>, _> =
        raw.split(',').map(|s| s.trim().parse::<u64>().map(Duration::from_secs)).collect();
    match parsed {
        // SQS caps visibility at 12 hours.
        Ok(delays) if !delays.is_empty() && delays.iter().all(|d| d.as_secs() <= 43_200) => delays,
        _ => {
            env.problems.push(format!(
                "RETRY_VISIBILITY_SECS={raw:?} must be a comma-separated list of seconds, each at most 43200"
            ));
            vec![Duration::from_secs(300)]
        }
    }
}

/// Reads a profile variable: `NAME_<TARGET>` first, then `NAME`; problems name the variable
/// that was read.
struct Scoped<'e, 'a> {
    env: &'e mut Env<'a>,
    target: Option<&'e Target>,
    /// Whether any `NAME_<TARGET>` was set.
    own: bool,
}

impl<'e, 'a> Scoped<'e, 'a> {
    fn new(env: &'e mut Env<'a>, target: Option<&'e Target>) -> Self {
        Self { env, target, own: false }
    }

    /// The variable's name and value.
    fn get(&mut self, name: &str) -> Option<(String, String)> {
        if let Some(target) = self.target {
            let own = format!("{name}_{target}");
            if let Some(value) = self.env.get(&own) {
                self.own = true;
                return Some((own, value));
            }
        }
        self.env.get(name).map(|value| (name.to_owned(), value))
    }

    fn problem(&mut self, problem: String) {
        self.env.problems.push(problem);
    }

    fn parsed<T: FromStr>(&mut self, name: &str, default: T) -> T
    where
        T::Err: std::fmt::Display,
    {
        match self.get(name) {
            None => default,
            Some((var, raw)) => raw.parse().unwrap_or_else(|e| {
                self.problem(format!("{var}={raw:?} is invalid: {e}"));
                default
            }),
        }
    }

    fn list(&mut self, name: &str) -> Option<(String, Vec<String>)> {
        self.get(name)
            .map(|(var, l)| (var, l.split(',').map(|c| c.trim().to_owned()).filter(|c| !c.is_empty()).collect()))
    }
}

fn profile(env: &mut Scoped<'_, '_>) -> Profile {
    let mut csv = csv_options(env);
    let defaults = FileNameTemplate::for_format(csv.format);
    let single = env.get("FILE_NAME_TEMPLATE").unwrap_or_else(|| ("FILE_NAME_TEMPLATE".into(), defaults.single));
    let several =
        env.get("FILE_NAME_TEMPLATE_MULTI").unwrap_or_else(|| ("FILE_NAME_TEMPLATE_MULTI".into(), defaults.several));
    for (var, template) in [&single, &several] {
        let stripped = FileNameTemplate::PLACEHOLDERS.iter().fold(template.clone(), |t, p| t.replace(p, ""));
        if !template.contains("{fileName}") || stripped.contains(['{', '}', '/']) {
            env.problem(format!("{var}={template:?} must contain {{fileName}}, no '/' and only known placeholders"));
        }
    }
    let file_names = FileNameTemplate { single: single.1, several: several.1 };
    let content = env.get("TRIGGER_FILE_CONTENT").and_then(|(var, raw)| {
        raw.parse::<TriggerContent>().map_err(|e| env.problem(format!("{var}={raw:?} is invalid: {e}"))).ok()
    });
    let existing = env.parsed("TRIGGER_FILE_EXISTING", ExistingFilePolicy::Overwrite);
    let trigger = match env.get("TRIGGER_FILE") {
        None => None,
        Some((var, spec)) => TriggerFile::parse(&spec, content, existing).unwrap_or_else(|e| {
            env.problem(format!("{var} is invalid: {e}"));
            None
        }),
    };
    if let (Some(target), true) = (env.target, env.own) {
        csv.profile = target.to_string();
    }
    Profile { csv, file_names, trigger }
}

fn csv_options(env: &mut Scoped<'_, '_>) -> CsvOptions {
    let encoding = csv_encoding(env);
    let (decimal_separator, numeric_columns) = csv_decimals(env);
    let (date_columns, date_format) = csv_dates(env);
    CsvOptions {
        profile: "default".to_owned(),
        format: env.parsed("FILE_FORMAT", FileFormat::Csv),
        delimiter: csv_delimiter(env),
        quoting: csv_quoting(env),
        header: env.parsed("CSV_HEADER", true),
        line_ending: csv_line_ending(env),
        encoding,
        replacement: csv_replacement(env, encoding),
        columns: csv_columns(env),
        date_columns,
        date_format,
        decimal_separator,
        numeric_columns,
    }
}

fn csv_delimiter(env: &mut Scoped<'_, '_>) -> u8 {
    let default = CsvOptions::default().delimiter;
    match env.get("CSV_DELIMITER") {
        None => default,
        Some((_, d)) if d == "\\t" || d == "tab" => b'\t',
        Some((_, d)) if d.len() == 1 && d != "\"" && d != "\r" && d != "\n" => d.as_bytes()[0],
        Some((var, other)) => {
            env.problem(format!(
                "{var}={other:?} must be one ASCII character other than a quote or line break, or 'tab'"
            ));
            default
        }
    }
}

fn csv_quoting(env: &mut Scoped<'_, '_>) -> Quoting {
    match env.get("CSV_QUOTING") {
        None => Quoting::Necessary,
        Some((_, q)) if q == "necessary" => Quoting::Necessary,
        Some((_, q)) if q == "always" => Quoting::Always,
        Some((_, q)) if q == "non-numeric" => Quoting::NonNumeric,
        Some((var, other)) => {
            env.problem(format!("{var}={other:?} is not necessary, always or non-numeric"));
            Quoting::Necessary
        }
    }
}

fn csv_line_ending(env: &mut Scoped<'_, '_>) -> LineEnding {
    match env.get("CSV_LINE_ENDING") {
        None => LineEnding::Crlf,
        Some((_, l)) if l == "crlf" => LineEnding::Crlf,
        Some((_, l)) if l == "lf" => LineEnding::Lf,
        Some((var, other)) => {
            env.problem(format!("{var}={other:?} is not crlf or lf"));
            LineEnding::Crlf
        }
    }
}

/// `Order,Part:MATNR,Quantity:MENGE`: selection and order, `:` renames.
fn csv_columns(env: &mut Scoped<'_, '_>) -> Option<Vec<ColumnMapping>> {
    env.list("CSV_COLUMNS").map(|(_, list)| {
        list.iter()
            .map(|c| match c.split_once(':') {
                Some((source, header)) => ColumnMapping { source: source.trim().into(), header: header.trim().into() },
                None => ColumnMapping { source: c.clone(), header: c.clone() },
            })
            .collect()
    })
}

fn csv_dates(env: &mut Scoped<'_, '_>) -> (Vec<String>, Option<time::format_description::OwnedFormatItem>) {
    let date_format = env.get("CSV_DATE_FORMAT").and_then(|(var, f)| {
        time::format_description::parse_owned::<2>(&f)
            .map_err(|e| env.problem(format!("{var}={f:?} is invalid: {e}")))
            .ok()
    });
    let date_columns = env.list("CSV_DATE_COLUMNS").map(|(_, l)| l).unwrap_or_default();
    if !date_columns.is_empty() && date_format.is_none() {
        env.problem("CSV_DATE_COLUMNS needs CSV_DATE_FORMAT".to_owned());
    }
    (date_columns, date_format)
}

fn csv_encoding(env: &mut Scoped<'_, '_>) -> Encoding {
    let encoding = env.parsed("CSV_ENCODING", Encoding::Utf8);
    // CSV_BOM=true, from before CSV_ENCODING, is utf-8-bom.
    if !env.parsed("CSV_BOM", false) {
        return encoding;
    }
    match encoding {
        Encoding::Utf8 | Encoding::Utf8Bom => Encoding::Utf8Bom,
        other => {
            env.problem(format!("CSV_BOM=true asks for a UTF-8 byte-order mark, but CSV_ENCODING is {}", other.name()));
            other
        }
    }
}

fn csv_replacement(env: &mut Scoped<'_, '_>, encoding: Encoding) -> Option<char> {
    let (var, r) = env.get("CSV_REPLACEMENT_CHAR")?;
    let mut chars = r.chars();
    match (chars.next(), chars.next()) {
        (Some(c), None)
            if encoding.single_byte(c).is_some() || matches!(encoding, Encoding::Utf8 | Encoding::Utf8Bom) =>
        {
            Some(c)
        }
        (Some(_), None) => {
            env.problem(format!("{var}={r:?} cannot itself be written in {}", encoding.name()));
            None
        }
        _ => {
            env.problem(format!("{var}={r:?} must be one character"));
            None
        }
    }
}

/// The decimal separator and the columns it applies to.
fn csv_decimals(env: &mut Scoped<'_, '_>) -> (u8, Option<Vec<String>>) {
    let decimal = env.get("CSV_DECIMAL_SEPARATOR");
    let decimal_separator = match &decimal {
        None => b'.',
        Some((_, d)) if d == "." || d == "," => d.as_bytes()[0],
        Some((var, other)) => {
            env.problem(format!("{var}={other:?} is not . or ,"));
            b'.'
        }
    };
    let numeric_columns = env.list("CSV_NUMERIC_COLUMNS").map(|(_, l)| l);
    // A decimal comma on every column would rewrite identifiers that look like numbers
    // (`100.200`): the columns it applies to are named.
    if decimal_separator != b'.' && numeric_columns.is_none() {
        let var = decimal.as_ref().map_or("CSV_DECIMAL_SEPARATOR", |(var, _)| var.as_str());
        env.problem(format!(
            "{var}=\",\" needs CSV_NUMERIC_COLUMNS (for this target or all): the columns that hold quantities, \
             so an identifier such as 100.200 is never rewritten"
        ));
    }
    (decimal_separator, numeric_columns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |name| map.get(name).cloned()
    }

    const WORKER: &[(&str, &str)] = &[
        ("STAGING_BUCKET", "b"),
        ("KINAXIS_SECRET_ID", "k"),
        ("KINAXIS_BASE_URL", "https://na1.kinaxis.net/ACME"),
        ("SFTP_SECRET_ID_PF2", "pf2"),
        ("SFTP_SECRET_ID_WP2", "wp2"),
        ("JOBS_QUEUE_URL", "https://sqs/jobs"),
        ("DEAD_LETTER_QUEUE_URL", "https://sqs/dlq"),
    ];

    #[test]
    fn a_complete_worker_environment_parses_with_the_documented_defaults() {
        let config = WorkerConfig::from_lookup(&lookup(WORKER)).unwrap();
        assert_eq!(config.worker.retry, RetryPolicy::default());
        assert_eq!(config.worker.sftp_secret_ids.len(), 2);
        assert_eq!(config.kinaxis.pages_in_flight, 4);
        assert_eq!(config.worker.existing_file, ExistingFilePolicy::Fail);
        assert_eq!(config.worker.stale_batch, StaleBatch::Fail);
        assert_eq!(config.worker.min_rows, 1);
        assert_eq!(config.worker.queue.max_receive_count, 5);
        assert_eq!((config.worker.stream.part_bytes, config.worker.stream.parts_in_flight), (5 << 20, 2));
        assert_eq!(
            (config.worker.stream.stall, config.worker.stream.call_timeout),
            (Duration::from_secs(1), Duration::from_secs(60))
        );
        assert!(config.worker.stream.sftp);
        assert_eq!(config.worker.pickup.lookback, Duration::from_secs(24 * 3600));
        assert!(config.worker.pickup.sla.values().all(|sla| *sla == Duration::from_secs(3600)));
        assert_eq!(config.event_bus_name, None);
        let minutes: Vec<u64> = (1..=4).map(|n| config.worker.queue.delay_after(n).as_secs() / 60).collect();
        assert_eq!(minutes, [5, 20, 60, 60]);
    }

    #[test]
    fn a_deadline_margin_shorter_than_an_uncuttable_sftp_call_is_refused_naming_both_variables() {
        let mut vars = WORKER.to_vec();
        vars.extend([("RETRY_DEADLINE_MARGIN_SECS", "30"), ("SFTP_IO_TIMEOUT_SECS", "60")]);
        let err = WorkerConfig::from_lookup(&lookup(&vars)).unwrap_err();
        assert!(err.message.contains("RETRY_DEADLINE_MARGIN_SECS=30"), "{}", err.message);
        assert!(err.message.contains("SFTP_IO_TIMEOUT_SECS=60"), "{}", err.message);
        // Later entries win in `lookup`: 30 s covers a 20 s SFTP call and the 2 s to record.
        vars.push(("SFTP_IO_TIMEOUT_SECS", "20"));
        assert!(WorkerConfig::from_lookup(&lookup(&vars)).is_ok());
    }

    #[test]
    fn stream_settings_are_read_and_a_part_s3_would_refuse_is_named() {
        let mut vars = WORKER.to_vec();
        vars.extend([("STREAM_PART_MIB", "16"), ("STREAM_STALL_MS", "250"), ("STREAM_SFTP", "false")]);
        let config = WorkerConfig::from_lookup(&lookup(&vars)).unwrap();
        assert_eq!(
            (config.worker.stream.part_bytes, config.worker.stream.stall),
            (16 << 20, Duration::from_millis(250))
        );
        assert!(!config.worker.stream.sftp);
        vars.extend([("STREAM_PART_MIB", "4"), ("STREAM_PARTS_IN_FLIGHT", "0")]);
        let err = WorkerConfig::from_lookup(&lookup(&vars)).unwrap_err();
        assert!(err.message.contains("STREAM_PART_MIB=4"), "{}", err.message);
        assert!(err.message.contains("STREAM_PARTS_IN_FLIGHT"), "{}", err.message);
    }

    #[test]
    fn queue_and_batch_settings_are_validated_by_name() {
        let mut vars = WORKER.to_vec();
        vars.extend([("STALE_BATCH", "newest"), ("RETRY_VISIBILITY_SECS", "300,forever"), ("MIN_ROWS", "-1")]);
        let err = WorkerConfig::from_lookup(&lookup(&vars)).unwrap_err();
        for name in ["STALE_BATCH", "RETRY_VISIBILITY_SECS", "MIN_ROWS"] {
            assert!(err.message.contains(name), "{name} missing from {}", err.message);
        }
    }

    #[test]
    fn every_missing_or_invalid_variable_is_named_in_one_error() {
        let err = WorkerConfig::from_lookup(&lookup(&[
            ("KINAXIS_BASE_URL", "ftp://x"),
            ("RETRY_MAX", "three"),
            ("CSV_DELIMITER", "ab"),
            ("SFTP_EXISTING_FILE", "replace"),
        ]))
        .unwrap_err();
        for name in [
            "STAGING_BUCKET",
            "KINAXIS_SECRET_ID",
            "KINAXIS_BASE_URL",
            "SFTP_SECRET_ID_PF2",
            "SFTP_SECRET_ID_WP2",
            "RETRY_MAX",
            "CSV_DELIMITER",
            "SFTP_EXISTING_FILE",
            "JOBS_QUEUE_URL",
            "DEAD_LETTER_QUEUE_URL",
        ] {
            assert!(err.message.contains(name), "{name} missing from {}", err.message);
        }
        assert_eq!(err.step, Step::Config);
    }

    #[test]
    fn a_decimal_comma_without_numeric_columns_is_refused_naming_the_variable() {
        let mut vars = WORKER.to_vec();
        vars.push(("CSV_DECIMAL_SEPARATOR_PF2", ","));
        let err = WorkerConfig::from_lookup(&lookup(&vars)).unwrap_err();
        assert!(err.message.contains("CSV_DECIMAL_SEPARATOR_PF2=\",\" needs CSV_NUMERIC_COLUMNS"), "{}", err.message);
        vars.push(("CSV_NUMERIC_COLUMNS", "Quantity"));
        assert!(WorkerConfig::from_lookup(&lookup(&vars)).is_ok());
    }

    #[test]
    fn a_target_variable_wins_over_the_global_one_for_that_target_only() {
        let mut vars = WORKER.to_vec();
        vars.extend([
            ("CSV_DELIMITER", ";"),
            ("CSV_DELIMITER_WP2", "tab"),
            ("CSV_ENCODING_PF2", "iso-8859-1"),
            ("CSV_REPLACEMENT_CHAR_PF2", "?"),
            ("CSV_DECIMAL_SEPARATOR_WP2", ","),
            ("CSV_NUMERIC_COLUMNS_WP2", "Quantity"),
            ("FILE_NAME_TEMPLATE_WP2", "{fileName}.{timestamp}.csv"),
            ("TRIGGER_FILE_PF2", "sha256"),
            ("TRIGGER_FILE", "done"),
        ]);
        let config = WorkerConfig::from_lookup(&lookup(&vars)).unwrap();
        let pf2 = config.worker.profiles.for_target(&Target::parse("PF2").unwrap());
        let wp2 = config.worker.profiles.for_target(&Target::parse("WP2").unwrap());
        assert_eq!((pf2.name(), wp2.name()), ("PF2", "WP2"));
        assert_eq!((pf2.csv.delimiter, wp2.csv.delimiter), (b';', b'\t'));
        assert_eq!((pf2.csv.encoding, wp2.csv.encoding), (Encoding::Latin1, Encoding::Utf8));
        assert_eq!((pf2.csv.replacement, wp2.csv.replacement), (Some('?'), None));
        assert_eq!((pf2.csv.decimal_separator, wp2.csv.decimal_separator), (b'.', b','));
        assert_eq!(pf2.file_names.single, FileNameTemplate::default().single);
        assert_eq!(wp2.file_names.single, "{fileName}.{timestamp}.csv");
        assert_eq!(pf2.trigger.as_ref().map(|t| t.name_for("a.csv")).as_deref(), Some("a.csv.sha256"));
        assert_eq!(wp2.trigger.as_ref().map(|t| t.name_for("a.csv")).as_deref(), Some("a.csv.done"));
        // A target with nothing of its own is on the default profile.
        let plain = WorkerConfig::from_lookup(&lookup(WORKER)).unwrap();
        assert_eq!(plain.worker.profiles.for_target(&Target::parse("PF2").unwrap()).name(), "default");
    }

    #[test]
    fn an_invalid_target_variable_is_refused_by_its_own_name() {
        let mut vars = WORKER.to_vec();
        vars.extend([
            ("CSV_ENCODING_WP2", "ebcdic"),
            ("CSV_DELIMITER_PF2", "ab"),
            ("CSV_ENCODING_PF2", "iso-8859-1"),
            ("CSV_REPLACEMENT_CHAR_PF2", "€"),
            ("TRIGGER_FILE_WP2", "{name}"),
            ("CSV_DECIMAL_SEPARATOR", ";"),
        ]);
        let err = WorkerConfig::from_lookup(&lookup(&vars)).unwrap_err();
        for name in [
            "CSV_ENCODING_WP2=\"ebcdic\"",
            "CSV_DELIMITER_PF2=\"ab\"",
            "CSV_REPLACEMENT_CHAR_PF2=\"€\" cannot itself be written in iso-8859-1",
            "TRIGGER_FILE_WP2",
            "CSV_DECIMAL_SEPARATOR=\";\"",
        ] {
            assert!(err.message.contains(name), "{name} missing from {}", err.message);
        }
        assert_eq!(err.message.matches("CSV_DECIMAL_SEPARATOR=").count(), 1, "{}", err.message);
    }

    #[test]
    fn a_trigger_template_that_names_the_data_file_itself_is_refused_by_its_variable() {
        for (var, template) in [("TRIGGER_FILE_PF2", "{stem}.csv"), ("TRIGGER_FILE", "{stem}.CSV")] {
            let mut vars = WORKER.to_vec();
            vars.push((var, template));
            let err = WorkerConfig::from_lookup(&lookup(&vars)).unwrap_err();
            assert!(err.message.contains(&format!("{var} is invalid")), "{}", err.message);
            assert!(err.message.contains("like the data file"), "{}", err.message);
        }
        let mut vars = WORKER.to_vec();
        vars.push(("TRIGGER_FILE", "{stem}.csv.ok"));
        let config = WorkerConfig::from_lookup(&lookup(&vars)).unwrap();
        assert_eq!(config.worker.profiles.default.trigger.unwrap().name_for("a.csv"), "a.csv.ok");
    }

    #[test]
    fn an_xml_target_gets_xml_file_names_and_its_trigger_stem_while_the_others_stay_csv() {
        let mut vars = WORKER.to_vec();
        vars.extend([("FILE_FORMAT_WP2", "xml"), ("TRIGGER_FILE", "{stem}.trg")]);
        let config = WorkerConfig::from_lookup(&lookup(&vars)).unwrap();
        let pf2 = config.worker.profiles.for_target(&Target::parse("PF2").unwrap());
        let wp2 = config.worker.profiles.for_target(&Target::parse("WP2").unwrap());
        assert_eq!((pf2.csv.format, wp2.csv.format), (FileFormat::Csv, FileFormat::Xml));
        assert_eq!(wp2.name(), "WP2");
        assert_eq!(
            (wp2.file_names.single.as_str(), wp2.file_names.several.as_str()),
            ("{fileName}_{timestamp}.xml", "{fileName}_{worksheet}_{timestamp}.xml")
        );
        assert_eq!(pf2.file_names, FileNameTemplate::default());
        assert_eq!(wp2.trigger.as_ref().map(|t| t.name_for("a.xml")).as_deref(), Some("a.trg"));

        for (var, value, problem) in [
            ("FILE_FORMAT_PF2", "json", "FILE_FORMAT_PF2=\"json\" is invalid"),
            ("TRIGGER_FILE", "{stem}.xml", "like the data file"),
        ] {
            let mut vars = WORKER.to_vec();
            vars.push((var, value));
            let err = WorkerConfig::from_lookup(&lookup(&vars)).unwrap_err();
            assert!(err.message.contains(problem), "{}", err.message);
        }
    }

    #[test]
    fn the_legacy_bom_switch_means_utf_8_bom_and_clashes_with_a_single_byte_encoding() {
        let mut vars = WORKER.to_vec();
        vars.push(("CSV_BOM", "true"));
        let config = WorkerConfig::from_lookup(&lookup(&vars)).unwrap();
        assert_eq!(config.worker.profiles.default.csv.encoding, Encoding::Utf8Bom);
        vars.push(("CSV_ENCODING", "windows-1252"));
        let err = WorkerConfig::from_lookup(&lookup(&vars)).unwrap_err();
        assert!(err.message.contains("CSV_BOM=true"), "{}", err.message);
    }

    #[test]
    fn a_target_added_by_an_override_needs_its_own_sftp_secret() {
        let mut vars = WORKER.to_vec();
        vars.push(("ROUTE_OVERRIDES", "Special-PF=QA1"));
        let err = WorkerConfig::from_lookup(&lookup(&vars)).unwrap_err();
        assert!(err.message.contains("SFTP_SECRET_ID_QA1"));
    }

    #[test]
    fn the_webhook_needs_its_bucket_and_secret_and_a_known_auth_mode() {
        let err = WebhookConfig::from_lookup(&lookup(&[("WEBHOOK_AUTH_MODE", "none")])).unwrap_err();
        assert!(err.message.contains("STAGING_BUCKET"));
        assert!(err.message.contains("WEBHOOK_SECRET_ID"));
        assert!(err.message.contains("WEBHOOK_AUTH_MODE"));
        let ok = WebhookConfig::from_lookup(&lookup(&[("STAGING_BUCKET", "b"), ("WEBHOOK_SECRET_ID", "w")])).unwrap();
        assert_eq!(ok.settings.auth_mode, AuthMode::Hmac);
        assert_eq!(ok.settings.max_body_bytes, 262_144);
    }

    #[test]
    fn kinaxis_over_plain_http_is_refused_except_to_a_loopback_simulator() {
        assert!(!is_loopback_http("http://kinaxis.example.com/ACME"));
        for url in ["http://127.0.0.1:8080/ACME", "http://localhost:9/x", "http://[::1]:9/x"] {
            assert!(is_loopback_http(url), "{url}");
        }
    }
}
