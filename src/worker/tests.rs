//! The lifecycle against in-memory ports: a crash (the run's future dropped where it stands,
//! as under SIGKILL) at every point that matters, SAP taking files between attempts, a
//! second runner, and the deadline; every case counts files ever delivered, receipts and
//! failure records.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use time::OffsetDateTime;
use tokio::time::Instant;

use super::*;
use crate::config::WorkerConfig;
use crate::job::{JobRequest, NamedScope};
use crate::memory::{MemoryDrop, MemoryQueue, MemorySecrets, MemorySource, MemoryStore, QueueCall};
use crate::routing::Target;

type TestWorker = Worker<Arc<MemoryStore>, MemorySecrets, Arc<MemorySource>, Arc<MemoryDrop>, Arc<MemoryQueue>>;

struct World {
    store: Arc<MemoryStore>,
    source: Arc<MemorySource>,
    drop: Arc<MemoryDrop>,
    queue: Arc<MemoryQueue>,
    env: Vec<(&'static str, String)>,
    stream: stream::StreamOptions,
}

/// Tiny chunks and parts, so that every file streams in several of each.
fn small_streams() -> stream::StreamOptions {
    stream::StreamOptions {
        part_bytes: 100,
        parts_in_flight: 3,
        chunk_bytes: 16,
        depth: 2,
        // Long enough that a healthy stream on a loaded machine is never dropped.
        stall: Duration::from_secs(2),
        call_timeout: Duration::from_secs(2),
        sftp: true,
    }
}

const JOB_EVENT: &str = "planned-orders-0600";

fn manifest(event_id: &str, received_at: OffsetDateTime) -> Manifest {
    Manifest {
        job_id: crate::job::job_id(event_id),
        received_at,
        target: Target::parse("PF2").unwrap(),
        content_sha256: crate::job::sha256_hex(event_id.as_bytes()),
        request: JobRequest {
            event_id: Some(event_id.into()),
            file_name: "PlannedOrders-PF".into(),
            workbook: Some(NamedScope { name: "PlannedOrders Export".into(), scope: "Public".into() }),
            table: None,
            worksheets: vec!["Planned Orders".into()],
            scenario: NamedScope { name: "Enterprise Data".into(), scope: "Public".into() },
            site_group: "All Sites".into(),
            filter: None,
            variables: BTreeMap::new(),
        },
    }
}

impl World {
    fn new(source: Arc<MemorySource>, drop: Arc<MemoryDrop>) -> Self {
        let world = Self {
            store: MemoryStore::new(),
            source,
            drop,
            queue: MemoryQueue::new(),
            env: Vec::new(),
            stream: small_streams(),
        };
        world.add_job(JOB_EVENT, OffsetDateTime::now_utc());
        world
    }

    fn add_job(&self, event_id: &str, received_at: OffsetDateTime) -> String {
        let manifest = manifest(event_id, received_at);
        self.store.insert(&keys::manifest(&manifest.job_id), serde_json::to_vec(&manifest).unwrap());
        keys::manifest(&manifest.job_id)
    }

    /// As `add_job`, the webhook's `fileName` written as the sender chose.
    fn add_job_named(&self, event_id: &str, received_at: OffsetDateTime, file_name: &str) -> String {
        let mut manifest = manifest(event_id, received_at);
        manifest.request.file_name = file_name.to_owned();
        self.store.insert(&keys::manifest(&manifest.job_id), serde_json::to_vec(&manifest).unwrap());
        keys::manifest(&manifest.job_id)
    }

    /// The SFTP temporary written only at delivery, from the spool (as before streaming).
    fn without_sftp_stream(mut self) -> Self {
        self.stream.sftp = false;
        self
    }

    fn streams(mut self, change: impl FnOnce(&mut stream::StreamOptions)) -> Self {
        change(&mut self.stream);
        self
    }

    fn set(mut self, name: &'static str, value: &str) -> Self {
        self.env.push((name, value.to_owned()));
        self
    }

    fn worker(&self) -> TestWorker {
        let mut vars: HashMap<&str, String> = [
            ("STAGING_BUCKET", "b"),
            ("KINAXIS_SECRET_ID", "kinaxis"),
            ("KINAXIS_BASE_URL", "https://kinaxis.invalid"),
            ("SFTP_SECRET_ID_PF2", "pf2"),
            ("SFTP_SECRET_ID_WP2", "wp2"),
            ("JOBS_QUEUE_URL", "jobs"),
            ("DEAD_LETTER_QUEUE_URL", "dlq"),
            ("RETRY_INITIAL_MS", "1"),
            ("RETRY_MAX_DELAY_MS", "5"),
            ("SFTP_IO_TIMEOUT_SECS", "0"),
            ("RETRY_DEADLINE_MARGIN_SECS", "5"),
            ("LEASE_GRACE_SECS", "0"),
        ]
        .into_iter()
        .map(|(k, v)| (k, v.to_owned()))
        .collect();
        vars.extend(self.env.iter().cloned());
        let config = WorkerConfig::from_lookup(&|name| vars.get(name).cloned()).unwrap();
        let sftp = json!({"host": "sap", "username": "relay", "password": "x", "host_key_sha256": "SHA256:x", "remote_dir": "/in"});
        let secrets = MemorySecrets(HashMap::from([
            ("kinaxis".to_owned(), json!({"client_id": "c", "client_secret": "s"}).to_string()),
            ("pf2".to_owned(), sftp.to_string()),
        ]));
        Worker::new(
            Arc::clone(&self.store),
            CachedSecrets::new(secrets, Duration::from_secs(60)),
            Arc::clone(&self.source),
            Arc::clone(&self.drop),
            Arc::clone(&self.queue),
            config.worker,
        )
        .with_stream_options(self.stream.clone())
    }

    fn job_key(&self) -> String {
        keys::manifest(&crate::job::job_id(JOB_EVENT))
    }

    /// The name the job's one data file gets.
    fn data_name(&self) -> String {
        let m: Manifest = serde_json::from_slice(&self.store.object(&self.job_key()).unwrap()).unwrap();
        let t = m.received_at;
        format!(
            "PlannedOrders-PF_{:04}{:02}{:02}{:02}{:02}{:02}.csv",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        )
    }

    fn job_id(&self) -> String {
        crate::job::job_id(JOB_EVENT).to_string()
    }

    fn receipt(&self) -> Option<Value> {
        self.store.json(&keys::receipt(&self.job_id()))
    }

    fn failure(&self) -> Option<Value> {
        self.store.json(&keys::failure(&self.job_id()))
    }

    /// Time passes: the crashed run's lease runs out, and so does a destination claim it held.
    fn expire_lease(&self) {
        for key in self.store.keys("locks/") {
            if let Some(mut lease) = self.store.json(&key) {
                lease["expiresAt"] = json!("2000-01-01T00:00:00Z");
                self.store.insert(&key, serde_json::to_vec(&lease).unwrap());
            }
        }
        for key in self.store.keys("latest/") {
            if let Some(mut claim) = self.store.json(&key) {
                if claim.get("holder").is_some() {
                    claim["holder"]["until"] = json!("2000-01-01T00:00:00Z");
                    self.store.insert(&key, serde_json::to_vec(&claim).unwrap());
                }
            }
        }
    }

    /// Runs the job until the armed crash strikes, then drops the run where it stands.
    async fn crash_run(&self, crash: &crate::memory::Crash) {
        let worker = self.worker();
        let job_key = self.job_key();
        let run = worker.run_job(&job_key, far(), Trigger::Queue { receive_count: 1 });
        tokio::select! {
            outcome = run => panic!("the run ended instead of crashing: {outcome:?}"),
            () = crash.struck() => {}
        }
    }

    async fn run(&self, trigger: Trigger) -> Result<JobOutcome> {
        self.worker().run_job(&self.job_key(), far(), trigger).await
    }

    /// Every promise at once: one file ever appeared, it is the job's, one receipt listing
    /// every failure recorded before it, no temporary left.
    fn assert_delivered_exactly_once(&self) {
        let appeared = self.drop.appeared();
        assert_eq!(appeared.len(), 1, "files that appeared: {appeared:?}; operations: {:?}", self.drop.operations());
        let receipt = self.receipt().expect("a receipt");
        assert_eq!(receipt["files"][0]["fileName"], json!(appeared[0]));
        let history = self.store.keys(&format!("failed/{}/", self.job_id()));
        let listed = receipt["earlierFailures"].as_array().map_or(0, Vec::len);
        assert_eq!(listed, history.len(), "the receipt lists every recorded failure: {receipt}");
        assert!(self.drop.all_files().iter().all(|n| !n.ends_with(".part")), "{:?}", self.drop.all_files());
        assert!(self.store.open_uploads().is_empty(), "staging uploads left open: {:?}", self.store.open_uploads());
    }

    /// As `assert_delivered_exactly_once`, for a job of `files` files.
    fn assert_delivered_exactly_once_per_file(&self, files: usize) {
        let appeared = self.drop.appeared();
        assert_eq!(appeared.len(), files, "files that appeared: {appeared:?}");
        let unique: std::collections::BTreeSet<_> = appeared.iter().collect();
        assert_eq!(unique.len(), files, "{appeared:?}");
        assert_eq!(self.receipt().expect("a receipt")["files"].as_array().map(Vec::len), Some(files));
        assert!(self.failure().is_none());
        assert!(self.drop.all_files().iter().all(|n| !n.ends_with(".part")), "{:?}", self.drop.all_files());
        assert!(self.store.open_uploads().is_empty(), "{:?}", self.store.open_uploads());
    }

    /// Data-file uploads to the folder, streamed or from the spool.
    fn data_uploads(&self) -> usize {
        self.drop.operations().iter().filter(|o| is_upload(o) && !o.contains(".sha256.")).count()
    }
}

fn is_upload(operation: &str) -> bool {
    operation.starts_with("upload ") || operation.starts_with("upload_stream ")
}

fn far() -> Instant {
    Instant::now() + Duration::from_secs(60)
}

fn queue(n: u32) -> Trigger {
    Trigger::Queue { receive_count: n }
}

#[tokio::test]
async fn a_job_runs_through_and_a_second_run_finds_it_delivered() {
    let world = World::new(MemorySource::new(10), MemoryDrop::new());
    assert!(matches!(world.run(queue(1)).await.unwrap(), JobOutcome::Delivered(_)));
    assert_eq!(world.run(queue(2)).await.unwrap(), JobOutcome::AlreadyDelivered);
    world.assert_delivered_exactly_once();
    assert!(world.store.keys("locks/").is_empty(), "the lease is released");
    let record = world.store.json(&keys::delivery(&world.job_id(), &world.drop.appeared()[0])).unwrap();
    assert_eq!(record["state"], "delivered");
    assert!(world.receipt().unwrap()["timingsMs"]["total"].is_u64(), "the receipt's timings include the total");
}

/// Where the crash strikes: in the bucket or the SAP folder, which operation on which
/// name, before or after it takes effect, and how many matching operations go through first.
#[tokio::test]
async fn a_crash_at_any_point_then_a_rerun_delivers_exactly_once_even_when_sap_took_the_file() {
    let cases: &[(&str, bool, &'static str, &str, bool, u32)] = &[
        ("before the streaming record", false, "put", "deliveries/", false, 0),
        ("after the streaming record, before the temporary", false, "put", "deliveries/", true, 0),
        ("mid-stream, in the SFTP temporary", true, "stream_chunk", ".part", false, 2),
        ("mid-stream, between staging parts", false, "upload_part", "staging/", true, 1),
        ("after the temporary is streamed whole", true, "upload_stream", ".part", true, 0),
        ("after the export, before staging completes", false, "complete_multipart", "staging/", false, 0),
        ("after staging completes, before its index", false, "put", "_staged.json", false, 0),
        ("after staging", false, "put", "_staged.json", true, 0),
        ("after the intent, before the rename", false, "put", "deliveries/", true, 1),
        ("after the rename", true, "rename", ".csv", true, 0),
        ("after the delivered mark", false, "put", "deliveries/", true, 2),
        ("before the receipt", false, "put", "receipts/", false, 0),
    ];
    for &(point, in_folder, operation, name, after, skip) in cases {
        for sap_takes_the_file in [false, true] {
            for console in [false, true] {
                let world = World::new(MemorySource::new(25), MemoryDrop::new());
                let crash = if in_folder { &world.drop.crash } else { &world.store.crash };
                crash.arm_nth(operation, name, after, skip);
                world.crash_run(crash).await;
                let taken = if sap_takes_the_file { world.drop.take_all() } else { Vec::new() };
                world.expire_lease();
                let trigger = if console { Trigger::Console } else { queue(2) };
                let outcome = world.run(trigger).await;
                let case = format!("crash {point}, SAP took {taken:?}, console {console}");
                assert!(
                    matches!(outcome, Ok(JobOutcome::Delivered(_)) | Ok(JobOutcome::AlreadyDelivered)),
                    "{case}: {outcome:?}"
                );
                let appeared = world.drop.appeared();
                assert_eq!(appeared.len(), 1, "{case}: appeared {appeared:?}, ops {:?}", world.drop.operations());
                assert!(world.receipt().is_some(), "{case}: no receipt");
                assert!(world.failure().is_none(), "{case}: a failure record beside the receipt");
                let left: Vec<String> = world.drop.all_files().into_iter().filter(|n| n.ends_with(".part")).collect();
                assert!(left.is_empty(), "{case}: temporaries left {left:?}");
                assert_eq!(world.store.keys("receipts/").len(), 1, "{case}");
                // What SAP holds is the staged copy of the export the receipt describes.
                let Ok(JobOutcome::Delivered(receipt)) = outcome else { continue };
                let staged = world.store.object(&keys::staged_file(&world.job_id(), &appeared[0])).expect("staged");
                assert_eq!(crate::job::sha256_hex(&staged), receipt.files[0].file.stats.sha256, "{case}");
                if let Some(delivered) = world.drop.file(&appeared[0]) {
                    assert_eq!(delivered, staged, "{case}");
                }
            }
        }
    }
}

/// The trigger's part of the matrix: SAP's inbound job takes a data file only with its
/// trigger there, and takes both.
#[tokio::test]
async fn a_crash_anywhere_around_the_trigger_then_a_rerun_writes_it_once_after_the_data_file_never_resending_it() {
    let cases: &[(&str, bool, &'static str, &str, bool, u32)] = &[
        ("after the data file's rename", true, "rename", ".csv", true, 0),
        ("after the delivered mark, before the trigger", false, "put", "deliveries/", true, 2),
        ("after the trigger's temporary is written", true, "upload", ".sha256.", true, 0),
        ("after the trigger's rename", true, "rename", ".csv.sha256", true, 0),
        ("after the trigger is recorded", false, "put", "deliveries/", true, 3),
        ("before the receipt", false, "put", "receipts/", false, 0),
    ];
    for &(point, in_folder, operation, name, after, skip) in cases {
        for sap_polls in [false, true] {
            let world = World::new(MemorySource::new(7), MemoryDrop::new()).set("TRIGGER_FILE", "sha256");
            let crash = if in_folder { &world.drop.crash } else { &world.store.crash };
            crash.arm_nth(operation, name, after, skip);
            world.crash_run(crash).await;
            let has_trigger = world.drop.files().iter().any(|n| n.ends_with(".csv.sha256"));
            let taken = if sap_polls && has_trigger { world.drop.take_all() } else { Vec::new() };
            world.expire_lease();
            let case = format!("crash {point}, SAP took {taken:?}");
            let outcome = world.run(queue(2)).await;
            let Ok(JobOutcome::Delivered(receipt)) = outcome else { panic!("{case}: {outcome:?}") };
            let appeared = world.drop.appeared();
            assert_eq!(appeared.len(), 2, "{case}: appeared {appeared:?}, ops {:?}", world.drop.operations());
            assert!(
                appeared[0].ends_with(".csv") && appeared[1] == format!("{}.sha256", appeared[0]),
                "{case}: {appeared:?}"
            );
            assert_eq!(world.data_uploads(), 1, "{case}: the data file is sent once");
            let trigger = receipt.files[0].trigger.as_ref().expect("a trigger record");
            assert!(trigger.written, "{case}");
            assert_eq!(world.source.exports(), 1, "{case}");
            assert!(world.failure().is_none(), "{case}");
            if !sap_polls {
                let data = world.drop.file(&appeared[0]).expect("the data file");
                let expected = format!("{}  {}\n", crate::job::sha256_hex(&data), appeared[0]);
                assert_eq!(world.drop.file(&appeared[1]).expect("the trigger"), expected.into_bytes(), "{case}");
            }
        }
    }
}

/// SAP's usual semaphore: its inbound job deletes the trigger first and reads the data file
/// later, leaving it there meanwhile. A crash at each point around the trigger, SAP taking
/// only the trigger, then a rerun: one trigger ever appears, never a second announcing the
/// batch again.
#[tokio::test]
async fn a_crash_around_the_trigger_then_sap_taking_only_the_trigger_never_gets_a_second_trigger() {
    let cases: &[(&str, bool, &'static str, &str, bool, u32)] = &[
        ("after the trigger's rename", true, "rename", ".csv.sha256", true, 0),
        ("after the delivered mark, before the trigger", false, "put", "deliveries/", true, 1),
        ("after the trigger's temporary is written", true, "upload", ".sha256.", true, 0),
        ("after the trigger's intent, before its rename", true, "rename", ".csv.sha256", false, 0),
        ("after the trigger's intent is recorded", false, "put", "deliveries/", true, 2),
        ("before the trigger is recorded written", false, "put", "deliveries/", false, 3),
        ("after the trigger is recorded written", false, "put", "deliveries/", true, 3),
    ];
    for &(point, in_folder, operation, name, after, skip) in cases {
        // The data file's temporary written at delivery (no `streaming` record), so the
        // crash points count the trigger's own writes; the trigger follows the same way either way.
        let world =
            World::new(MemorySource::new(7), MemoryDrop::new()).set("TRIGGER_FILE", "sha256").without_sftp_stream();
        let crash = if in_folder { &world.drop.crash } else { &world.store.crash };
        crash.arm_nth(operation, name, after, skip);
        world.crash_run(crash).await;
        let trigger_name = world.drop.files().into_iter().find(|n| n.ends_with(".csv.sha256"));
        let took_trigger = trigger_name.is_some_and(|n| world.drop.take(&n));
        world.expire_lease();
        let case = format!("crash {point}, SAP took the trigger: {took_trigger}");
        let outcome = world.run(queue(2)).await;
        let Ok(JobOutcome::Delivered(receipt)) = outcome else { panic!("{case}: {outcome:?}") };
        let appeared = world.drop.appeared();
        let triggers = appeared.iter().filter(|n| n.ends_with(".csv.sha256")).count();
        let data = appeared.iter().filter(|n| n.ends_with(".csv")).count();
        assert_eq!((data, triggers), (1, 1), "{case}: appeared {appeared:?}, ops {:?}", world.drop.operations());
        let data_uploads =
            world.drop.operations().iter().filter(|o| o.starts_with("upload ") && !o.contains(".sha256.")).count();
        assert_eq!(data_uploads, 1, "{case}: the data file is sent once");
        let trigger = receipt.files[0].trigger.as_ref().expect("a trigger record");
        assert!(trigger.written && trigger.not_written.is_none(), "{case}: {trigger:?}");
        // A temporary cut before its intent was recorded carries the job's id: the next
        // attempt removes it, whatever its age.
        let left: Vec<String> = world.drop.all_files().into_iter().filter(|n| n.ends_with(".part")).collect();
        assert!(left.is_empty(), "{case}: temporaries left {left:?}");
        assert_eq!(world.source.exports(), 1, "{case}");
        assert!(world.failure().is_none(), "{case}");
    }
}

/// The trigger's intent write fails, or lands and answers an error: the intent is
/// unrecorded before its temporary goes (or a landed intent would read the missing temporary
/// as a rename), and the retry writes the one trigger.
#[tokio::test]
async fn a_failed_trigger_intent_write_is_unrecorded_before_its_temporary_goes_and_the_retry_writes_one_trigger() {
    for landed in [false, true] {
        let world =
            World::new(MemorySource::new(4), MemoryDrop::new()).set("TRIGGER_FILE", "sha256").without_sftp_stream();
        world.store.crash.arm_nth("put", "deliveries/", true, 1);
        world.crash_run(&world.store.crash).await;
        world.expire_lease();
        if landed {
            world.store.fail_after_landing("put", "deliveries/", 1);
        } else {
            world.store.fail("put", "deliveries/", 1, true);
        }
        let JobOutcome::Delivered(receipt) = world.run(queue(2)).await.unwrap() else { panic!("not delivered") };
        let ops = world.drop.operations();
        let triggers = world.drop.appeared().iter().filter(|n| n.ends_with(".sha256")).count();
        assert_eq!(triggers, 1, "landed {landed}: appeared {:?}, ops {ops:?}", world.drop.appeared());
        assert!(ops.iter().any(|o| o.starts_with("remove .") && o.ends_with(".part")), "landed {landed}: {ops:?}");
        assert!(receipt.files[0].trigger.as_ref().is_some_and(|t| t.written && t.uploaded), "landed {landed}");
        assert!(world.drop.all_files().iter().all(|n| !n.ends_with(".part")), "{:?}", world.drop.all_files());
    }
}

/// SAP's pickup took the data file without waiting for its trigger: the record says no
/// trigger was written and why, none is written later, and the job counts as done.
#[tokio::test]
async fn with_the_data_file_taken_before_its_trigger_the_record_says_no_trigger_was_written_and_why() {
    let cases: &[(&str, &'static str, u32, &str)] = &[
        ("after the data file's rename", "rename", 0, "renamed and taken by SAP"),
        ("after the delivered mark", "put", 1, "gone before its trigger"),
    ];
    for &(point, operation, skip, reason) in cases {
        let world =
            World::new(MemorySource::new(4), MemoryDrop::new()).set("TRIGGER_FILE", "done").without_sftp_stream();
        let crash = if operation == "rename" { &world.drop.crash } else { &world.store.crash };
        crash.arm_nth(operation, if operation == "rename" { ".csv" } else { "deliveries/" }, true, skip);
        world.crash_run(crash).await;
        assert_eq!(world.drop.take_all(), vec![world.data_name()], "{point}");
        world.expire_lease();
        let JobOutcome::Delivered(receipt) = world.run(queue(2)).await.unwrap() else {
            panic!("{point}: not delivered")
        };
        let trigger = receipt.files[0].trigger.as_ref().expect("a trigger record");
        assert!(!trigger.written && !trigger.uploaded, "{point}: {trigger:?}");
        assert!(trigger.not_written.as_deref().is_some_and(|r| r.contains(reason)), "{point}: {trigger:?}");
        assert_eq!(receipt.files[0].taken_by_sap, operation == "rename", "{point}");
        assert_eq!(world.drop.appeared(), vec![world.data_name()], "{point}: no trigger for a file that is gone");
        assert_eq!(world.run(queue(3)).await.unwrap(), JobOutcome::AlreadyDelivered, "{point}: settled");
    }
}

/// With fixed names and `overwrite`, yesterday's `X.csv.sha256` must not stand beside
/// today's `X.csv`: it names another hash, and while a replace removes first it announces no
/// file at all. It goes, recorded, before the data file moves; `fail` refuses instead.
#[tokio::test]
async fn a_stale_trigger_is_removed_before_the_data_file_is_replaced_or_refused_under_fail() {
    for atomic in [true, false] {
        let drop = MemoryDrop::new();
        drop.no_atomic_rename.store(!atomic, std::sync::atomic::Ordering::SeqCst);
        let world =
            World::new(MemorySource::new(3), drop).set("SFTP_EXISTING_FILE", "overwrite").set("TRIGGER_FILE", "sha256");
        let name = world.data_name();
        let trigger_name = format!("{name}.sha256");
        world.drop.put_file(&name, b"yesterday's plan");
        world
            .drop
            .put_file(&trigger_name, format!("{}  {name}\n", crate::job::sha256_hex(b"yesterday's plan")).as_bytes());
        let JobOutcome::Delivered(receipt) = world.run(queue(1)).await.unwrap() else { panic!("not delivered") };
        let ops = world.drop.operations();
        let at = |op: &str| ops.iter().position(|o| o == op);
        let stale_gone = at(&format!("remove {trigger_name}")).expect("the stale trigger removed");
        let data_moved = at(&format!("replace {name}")).or(at(&format!("remove {name}"))).expect("the data replaced");
        assert!(stale_gone < data_moved, "atomic {atomic}: {ops:?}");
        let trigger = receipt.files[0].trigger.as_ref().expect("a trigger record");
        assert!(trigger.stale_removed && trigger.written, "{trigger:?}");
        let data = world.drop.file(&name).expect("the data file");
        let expected = format!("{}  {name}\n", crate::job::sha256_hex(&data));
        assert_eq!(world.drop.file(&trigger_name), Some(expected.into_bytes()), "atomic {atomic}");
        let stored = world.store.json(&keys::delivery(&world.job_id(), &name)).unwrap();
        assert_eq!(stored["trigger"]["staleRemoved"], json!(true));
    }
    let world = World::new(MemorySource::new(3), MemoryDrop::new())
        .set("SFTP_EXISTING_FILE", "overwrite")
        .set("TRIGGER_FILE", "sha256")
        .set("TRIGGER_FILE_EXISTING", "fail");
    let name = world.data_name();
    world.drop.put_file(&name, b"yesterday's plan");
    world.drop.put_file(&format!("{name}.sha256"), b"yesterday's hash");
    let err = world.run(queue(1)).await.unwrap_err();
    assert!(!err.is_transient() && err.message.contains("TRIGGER_FILE_EXISTING=fail"), "{err:?}");
    assert_eq!(world.drop.file(&name), Some(b"yesterday's plan".to_vec()), "the data file is left as it was");
    assert!(world.drop.appeared().is_empty(), "{:?}", world.drop.appeared());
}

#[tokio::test]
async fn with_the_file_already_there_overwrite_replaces_it_in_one_step_or_says_it_removed_it_first() {
    for atomic in [true, false] {
        let drop = MemoryDrop::new();
        drop.no_atomic_rename.store(!atomic, std::sync::atomic::Ordering::SeqCst);
        let world = World::new(MemorySource::new(3), drop).set("SFTP_EXISTING_FILE", "overwrite");
        let name = world.data_name();
        world.drop.put_file(&name, b"yesterday's plan");
        let JobOutcome::Delivered(receipt) = world.run(queue(1)).await.unwrap() else { panic!("not delivered") };
        let record = &receipt.files[0];
        let ops = world.drop.operations();
        if atomic {
            assert_eq!(record.replaced, Some(crate::job::Replaced::Atomically));
            assert!(!ops.contains(&format!("remove {name}")), "{ops:?}");
        } else {
            assert_eq!(record.replaced, Some(crate::job::Replaced::RemovedFirst));
            assert!(ops.contains(&format!("remove {name}")), "{ops:?}");
        }
        assert_eq!(record.remote_size, Some(record.file.stats.bytes));
        assert_eq!(world.drop.file(&name).map(|b| b.len() as u64), Some(record.file.stats.bytes));
    }
}

#[tokio::test]
async fn after_a_crash_past_the_rename_with_the_file_gone_the_log_and_record_say_sap_took_it() {
    let world = World::new(MemorySource::new(5), MemoryDrop::new());
    world.drop.crash.arm("rename", ".csv", true);
    world.crash_run(&world.drop.crash).await;
    assert_eq!(world.drop.take_all().len(), 1);
    world.expire_lease();
    let JobOutcome::Delivered(receipt) = world.run(queue(2)).await.unwrap() else { panic!("not delivered") };
    assert!(receipt.files[0].taken_by_sap);
    assert_eq!(world.source.exports(), 1, "resumed from the staged CSV, not exported again");
    world.assert_delivered_exactly_once();
}

#[tokio::test]
async fn a_multi_file_job_whose_second_file_fails_resumes_with_only_that_file() {
    let source = MemorySource::with_worksheets(&[("Planned Orders", 4), ("Stock", 3)]);
    let world = World::new(source, MemoryDrop::new());
    // Its stream fails, then four uploads: the first try and its three retries in this run.
    world.drop.fail("upload_stream", "_Stock_", 1, true);
    world.drop.fail("upload", "_Stock_", 4, true);
    let err = world.run(queue(1)).await.unwrap_err();
    assert_eq!((err.class, err.step), (ErrorClass::Transient, Step::Deliver), "{}", err.chain());
    assert_eq!(world.drop.appeared().len(), 1);
    let first = world.drop.take_all();

    let JobOutcome::Delivered(receipt) = world.run(queue(2)).await.unwrap() else { panic!("not delivered") };
    let appeared = world.drop.appeared();
    assert_eq!(appeared.len(), 2, "{appeared:?}");
    assert_eq!(appeared[0], first[0], "the first file was not sent again");
    assert_eq!(receipt.files.len(), 2);
    // The failure stays as it was recorded; the receipt tells it came before.
    assert_eq!(world.failure().map(|f| f["step"].clone()), Some(json!("deliver")));
    assert_eq!(receipt.earlier_failures.len(), 1);
    assert_eq!(receipt.earlier_failures[0].receive_count, Some(1));
}

#[tokio::test]
async fn an_abandoned_incomplete_temporary_is_recorded_before_it_is_removed_and_never_read_as_a_rename() {
    let world = World::new(MemorySource::new(50), MemoryDrop::new());
    // Before the intent (the record written before it is the streaming one).
    world.store.crash.arm_nth("put", "deliveries/", false, 1);
    world.crash_run(&world.store.crash).await;
    // A temporary that is not complete, named by a hand-made intent (a cut upload).
    let name = world.drop.all_files().into_iter().find(|n| n.ends_with(".part")).expect("the temporary");
    world.drop.put_file(&name, b"half");
    let staged: Vec<StagedFile> =
        serde_json::from_slice(&world.store.object(&keys::staged_index(&world.job_id())).unwrap()).unwrap();
    let record = DeliveryRecord {
        state: DeliveryState::Intent,
        file: staged[0].clone(),
        remote_path: format!("/in/{}", staged[0].file_name),
        temp_name: name.clone(),
        attempt: 1,
        uploaded: true,
        taken_by_sap: false,
        replaced: None,
        remote_size: None,
        trigger: None,
        claim: None,
        updated_at: OffsetDateTime::now_utc(),
    };
    world.store.insert(&keys::delivery(&world.job_id(), &staged[0].file_name), serde_json::to_vec(&record).unwrap());
    world.expire_lease();
    world.run(queue(2)).await.unwrap();
    let operations = world.drop.operations();
    let removed = operations.iter().position(|o| o == &format!("remove {name}")).expect("the temporary removed");
    let uploaded_again = operations.iter().rposition(|o| is_upload(o)).expect("uploaded again");
    assert!(removed < uploaded_again, "{operations:?}");
    world.assert_delivered_exactly_once();
}

#[tokio::test]
async fn a_run_that_finds_the_lease_held_neither_exports_nor_records_a_failure_and_is_retried_later() {
    let world = World::new(MemorySource::new(5), MemoryDrop::new());
    world.store.crash.arm("put", "_staged.json", true);
    world.crash_run(&world.store.crash).await;
    let exports = world.source.exports();

    let answer = world.worker().handle_json(&sqs_event(&world.job_key(), 1), far()).await.unwrap();
    assert_eq!(answer["batchItemFailures"].as_array().map(Vec::len), Some(1));
    assert_eq!(world.source.exports(), exports, "no export while another run holds the lease");
    assert!(world.failure().is_none());
    assert_eq!(
        world.queue.calls(),
        [QueueCall::RetryLater { receipt_handle: "rh-1".into(), delay: Duration::from_secs(300) }]
    );
    // A console re-run honours the lease too, and says until when.
    let err = world.worker().handle_json(&json!({"jobKey": world.job_key()}), far()).await.unwrap_err();
    assert_eq!(err.step, Step::Lease, "{}", err.chain());
}

#[tokio::test]
async fn two_runs_started_together_deliver_one_file_and_one_receipt() {
    for _ in 0..20 {
        let world = World::new(MemorySource::new(30).with_latency(Duration::from_millis(2)), MemoryDrop::new());
        let (a, b, job_key) = (world.worker(), world.worker(), world.job_key());
        let (first, second) = tokio::join!(a.run_job(&job_key, far(), queue(1)), b.run_job(&job_key, far(), queue(1)));
        let outcomes = [first.unwrap(), second.unwrap()];
        assert_eq!(outcomes.iter().filter(|o| matches!(o, JobOutcome::Delivered(_))).count(), 1, "{outcomes:?}");
        world.assert_delivered_exactly_once();
        assert_eq!(world.source.exports(), 1);
    }
}

fn sqs_event(job_key: &str, receive_count: u32) -> Value {
    let body = json!({"Records": [{"s3": {"bucket": {"name": "b"}, "object": {"key": job_key.replace('/', "%2F")}}}]});
    json!({"Records": [{
        "messageId": "m-1",
        "receiptHandle": format!("rh-{receive_count}"),
        "body": body.to_string(),
        "attributes": {"ApproximateReceiveCount": receive_count.to_string()},
        "messageAttributes": {},
    }]})
}

/// A console run dies holding the lease; the queue's last receive of the job comes.
#[tokio::test]
async fn the_last_receive_of_a_job_held_by_a_dead_run_queues_a_check_that_delivers_it_once_the_lease_runs_out() {
    let world = World::new(MemorySource::new(5), MemoryDrop::new());
    world.store.crash.arm("put", "_staged.json", true);
    world.crash_run(&world.store.crash).await;
    let answer = world.worker().handle_json(&sqs_event(&world.job_key(), 5), far()).await.unwrap();
    assert_eq!(answer["batchItemFailures"].as_array().map(Vec::len), Some(0), "acknowledged: a check follows");
    let calls = world.queue.calls();
    let [QueueCall::SendLater { body, delay }] = calls.as_slice() else {
        panic!("no later check: {:?}", world.queue.calls())
    };
    assert!(*delay > Duration::from_secs(30) && *delay <= Duration::from_secs(62), "after the lease: {delay:?}");
    assert_eq!(event::lease_checks(body), 1);
    assert!(world.receipt().is_none() && world.failure().is_none());

    // The check arrives after the dead run's lease ran out: the job is delivered.
    world.expire_lease();
    let mut check = sqs_event(&world.job_key(), 1);
    check["Records"][0]["body"] = json!(body);
    let answer = world.worker().handle_json(&check, far()).await.unwrap();
    assert_eq!(answer["batchItemFailures"].as_array().map(Vec::len), Some(0));
    world.assert_delivered_exactly_once();
}

#[tokio::test]
async fn a_job_still_held_after_every_later_check_goes_to_the_dead_letter_queue_saying_so() {
    let world = World::new(MemorySource::new(5), MemoryDrop::new());
    world.store.crash.arm("put", "_staged.json", true);
    world.crash_run(&world.store.crash).await;
    let mut last = sqs_event(&world.job_key(), 5);
    let body = last["Records"][0]["body"].as_str().unwrap().to_owned();
    let mut checked = serde_json::from_str::<Value>(&body).unwrap();
    checked["leaseChecks"] = json!(4);
    last["Records"][0]["body"] = json!(checked.to_string());
    let answer = world.worker().handle_json(&last, far()).await.unwrap();
    assert_eq!(answer["batchItemFailures"].as_array().map(Vec::len), Some(0));
    let calls = world.queue.calls();
    let [QueueCall::DeadLetter { reason, .. }] = calls.as_slice() else {
        panic!("not dead-lettered: {:?}", world.queue.calls())
    };
    assert!(reason.contains("still held by another run") && reason.contains("4 later checks"), "{reason}");
}

#[tokio::test]
async fn a_permanent_failure_goes_to_the_dead_letter_queue_at_once_and_is_acknowledged() {
    let world = World::new(MemorySource::new(5), MemoryDrop::new());
    world.source.fail(1, false);
    let answer = world.worker().handle_json(&sqs_event(&world.job_key(), 1), far()).await.unwrap();
    assert_eq!(answer, json!({"batchItemFailures": []}));
    let calls = world.queue.calls();
    assert!(matches!(&calls[..], [QueueCall::DeadLetter { reason, .. }] if reason.contains("permanent")), "{calls:?}");
    assert_eq!(world.failure().unwrap()["class"], "permanent");
}

#[tokio::test]
async fn a_transient_failure_waits_longer_each_receive_and_the_last_receive_goes_to_the_dead_letter_queue() {
    let world = World::new(MemorySource::new(5), MemoryDrop::new());
    world.source.fail(100, true);
    for receive in 1..=5 {
        let answer = world.worker().handle_json(&sqs_event(&world.job_key(), receive), far()).await.unwrap();
        let failed = answer["batchItemFailures"].as_array().map(Vec::len);
        assert_eq!(failed, Some(if receive < 5 { 1 } else { 0 }), "receive {receive}");
    }
    let delays: Vec<u64> = world
        .queue
        .calls()
        .iter()
        .filter_map(|c| match c {
            QueueCall::RetryLater { delay, .. } => Some(delay.as_secs() / 60),
            QueueCall::DeadLetter { .. } | QueueCall::SendLater { .. } => None,
        })
        .collect();
    assert_eq!(delays, [5, 20, 60, 60]);
    assert!(matches!(world.queue.calls().last(), Some(QueueCall::DeadLetter { .. })));
}

#[tokio::test]
async fn when_the_dead_letter_queue_cannot_be_reached_the_message_fails_so_the_redrive_still_takes_it() {
    let world = World::new(MemorySource::new(5), MemoryDrop::new());
    world.source.fail(1, false);
    world.queue.fail("dead_letter", 1);
    let answer = world.worker().handle_json(&sqs_event(&world.job_key(), 1), far()).await.unwrap();
    assert_eq!(answer["batchItemFailures"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn the_deadline_mid_fetch_ends_the_job_as_a_transient_fetch_failure_recorded_before_the_deadline() {
    let world = World::new(MemorySource::new(5).with_latency(Duration::from_secs(30)), MemoryDrop::new())
        .set("RETRY_DEADLINE_MARGIN_SECS", "2");
    let deadline = Instant::now() + Duration::from_millis(2500);
    let err = world.worker().run_job(&world.job_key(), deadline, queue(1)).await.unwrap_err();
    assert!(Instant::now() < deadline, "ended after the deadline");
    assert_eq!((err.class, err.step), (ErrorClass::Transient, Step::Fetch), "{}", err.chain());
    let failure = world.failure().expect("the failure record");
    assert_eq!((failure["class"].as_str(), failure["step"].as_str()), (Some("transient"), Some("fetch")));
    assert!(world.drop.all_files().is_empty());
}

#[tokio::test]
async fn the_deadline_mid_upload_stops_the_upload_removes_its_temporary_and_records_a_deliver_failure() {
    // One staging part, and a second of work time: the export and staging end well
    // within it on a loaded machine; the slow link's upload of ~450 kB does not.
    let world = World::new(MemorySource::new(50_000), MemoryDrop::slow(1024, Duration::from_millis(5)))
        .without_sftp_stream()
        .streams(|o| o.part_bytes = 1 << 20)
        .set("RETRY_DEADLINE_MARGIN_SECS", "2");
    let deadline = Instant::now() + Duration::from_millis(3000);
    let err = world.worker().run_job(&world.job_key(), deadline, queue(1)).await.unwrap_err();
    assert!(Instant::now() < deadline, "ended after the deadline");
    assert_eq!((err.class, err.step), (ErrorClass::Transient, Step::Deliver), "{}", err.chain());
    assert!(world.drop.operations().iter().any(|o| o.starts_with("upload ")), "the upload had begun");
    assert!(world.drop.all_files().is_empty(), "left behind: {:?}", world.drop.all_files());
    assert_eq!(world.failure().unwrap()["step"], "deliver");
}

#[tokio::test]
async fn an_older_batch_after_a_newer_one_is_refused_naming_both_jobs_or_skipped_with_a_receipt() {
    let world = World::new(MemorySource::new(5), MemoryDrop::new());
    let older = world.add_job("planned-orders-0000", OffsetDateTime::now_utc() - time::Duration::hours(6));
    world.run(queue(1)).await.unwrap();
    let err = world.worker().run_job(&older, far(), queue(1)).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Permanent);
    assert!(
        err.message.contains(&world.job_id())
            && err.message.contains(crate::job::job_id("planned-orders-0000").as_str())
    );
    assert_eq!(world.drop.appeared().len(), 1);

    let world = World::new(MemorySource::new(5), MemoryDrop::new()).set("STALE_BATCH", "skip");
    let older = world.add_job("planned-orders-0000", OffsetDateTime::now_utc() - time::Duration::hours(6));
    world.run(queue(1)).await.unwrap();
    let JobOutcome::Skipped(receipt) = world.worker().run_job(&older, far(), queue(1)).await.unwrap() else {
        panic!("not skipped")
    };
    assert!(receipt.skipped.unwrap().contains("older than"));
    assert_eq!(world.drop.appeared().len(), 1);
}

#[tokio::test]
async fn an_older_batch_whose_file_name_differs_only_by_a_csv_extension_is_still_the_same_file_and_refused() {
    let world = World::new(MemorySource::new(5), MemoryDrop::new());
    let older = world.add_job_named(
        "planned-orders-0000",
        OffsetDateTime::now_utc() - time::Duration::hours(6),
        "PlannedOrders-PF.csv",
    );
    world.run(queue(1)).await.unwrap();
    let err = world.worker().run_job(&older, far(), queue(1)).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Permanent, "{}", err.message);
    assert!(err.message.contains("older than"), "{}", err.message);
    assert_eq!(world.drop.appeared().len(), 1, "the older batch did not replace the newer file");
}

#[tokio::test]
async fn an_export_with_fewer_rows_than_min_rows_is_a_permanent_failure_naming_the_worksheet() {
    let world = World::new(MemorySource::new(0), MemoryDrop::new());
    let err = world.run(queue(1)).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Permanent);
    assert!(err.message.contains("\"Planned Orders\"") && err.message.contains("MIN_ROWS=1"), "{}", err.message);
    assert!(world.drop.appeared().is_empty());
    assert!(world.store.keys("staging/").is_empty(), "nothing staged");
}

#[tokio::test]
async fn an_intent_whose_write_landed_but_reported_an_error_is_never_read_as_taken_by_sap() {
    let world = World::new(MemorySource::new(8), MemoryDrop::new());
    // The intent: the second record written (the first is the streaming one).
    world.store.fail_after_landing_nth("put", "deliveries/", 1, 1);
    let JobOutcome::Delivered(receipt) = world.run(queue(1)).await.unwrap() else { panic!("not delivered") };
    assert!(!receipt.files[0].taken_by_sap, "{receipt:?}");
    world.assert_delivered_exactly_once();
    assert!(world.data_uploads() >= 2, "sent again, for real: {:?}", world.drop.operations());
}

#[tokio::test]
async fn a_job_whose_file_reached_sap_is_finished_even_after_a_newer_batch_was_delivered() {
    let world = World::new(MemorySource::new(5), MemoryDrop::new());
    world.drop.crash.arm("rename", ".csv", true);
    world.crash_run(&world.drop.crash).await;
    // The crashed run's lease, and with it its claim of the destination, runs out.
    world.expire_lease();
    let newer = world.add_job("planned-orders-1200", OffsetDateTime::now_utc() + time::Duration::hours(6));
    assert!(matches!(world.worker().run_job(&newer, far(), queue(1)).await.unwrap(), JobOutcome::Delivered(_)));
    let outcome = world.run(queue(2)).await;
    assert!(matches!(outcome, Ok(JobOutcome::Delivered(_))), "{outcome:?}");
    assert!(world.failure().is_none());
    assert_eq!(world.drop.appeared().len(), 2, "{:?}", world.drop.appeared());
}

#[tokio::test]
async fn a_job_removes_its_own_cut_temporaries_whatever_their_age_and_never_another_jobs() {
    let world = World::new(MemorySource::new(5), MemoryDrop::new());
    let data = world.data_name();
    let other_job = crate::job::job_id("planned-orders-1200");
    let own_fresh = format!(".{data}.{}.1-0000dead.part", world.job_id());
    let own_old = format!(".{data}.{}.1-0000beef.part", world.job_id());
    let others = format!(".{data}.{other_job}.1-00000001.part");
    let unnamed = format!(".{data}.1-00000002.part");
    for name in [&own_fresh, &own_old, &others, &unnamed] {
        world.drop.put_file(name, b"cut");
    }
    world.drop.age(&own_old, 3600);
    world.drop.age(&others, 3600);
    world.drop.age(&unnamed, 3600);
    world.run(queue(1)).await.unwrap();
    let left = world.drop.all_files();
    assert!(!left.contains(&own_fresh) && !left.contains(&own_old), "{left:?}");
    assert!(left.contains(&others), "another job's temporary stays: {left:?}");
    assert!(left.contains(&unnamed), "a temporary no job's id names stays: {left:?}");
}

#[tokio::test]
async fn the_deadline_mid_stream_stops_the_stream_removes_its_temporary_and_aborts_staging_before_the_deadline() {
    let world = World::new(MemorySource::new(50_000), MemoryDrop::slow(1024, Duration::from_millis(5)))
        .set("RETRY_DEADLINE_MARGIN_SECS", "2")
        .streams(|o| {
            o.stall = Duration::from_millis(50);
            o.part_bytes = 1 << 20;
        });
    let deadline = Instant::now() + Duration::from_millis(3000);
    let err = world.worker().run_job(&world.job_key(), deadline, queue(1)).await.unwrap_err();
    assert!(Instant::now() < deadline, "ended after the deadline");
    // The slow link did not hold the export back (its stream was dropped): the export
    // and staging finished, and time ran out delivering, where the slow link is.
    assert_eq!((err.class, err.step), (ErrorClass::Transient, Step::Deliver), "{}", err.chain());
    assert!(world.drop.operations().iter().any(|o| o.starts_with("upload_stream ")), "the stream had begun");
    assert!(world.drop.all_files().is_empty(), "left behind: {:?}", world.drop.all_files());
    assert!(world.store.open_uploads().is_empty(), "{:?}", world.store.open_uploads());
    assert_eq!(world.failure().unwrap()["class"], "transient");
}

#[tokio::test]
async fn a_job_streams_its_csv_into_staging_and_the_sftp_temporary_once_and_renames_it_after_staging() {
    let world = World::new(MemorySource::with_worksheets(&[("Planned Orders", 40), ("Stock", 30)]), MemoryDrop::new());
    let JobOutcome::Delivered(receipt) = world.run(queue(1)).await.unwrap() else { panic!("not delivered") };
    world.assert_delivered_exactly_once_per_file(2);
    let operations = world.drop.operations();
    assert_eq!(operations.iter().filter(|o| o.starts_with("upload_stream ")).count(), 2, "{operations:?}");
    assert!(!operations.iter().any(|o| o.starts_with("upload ")), "nothing sent twice: {operations:?}");
    for file in &receipt.files {
        let staged = world.store.object(&keys::staged_file(&world.job_id(), &file.file.file_name)).expect("staged");
        assert!(staged.len() > 100, "{} bytes: more than one part of 100", staged.len());
        assert_eq!(crate::job::sha256_hex(&staged), file.file.stats.sha256);
        assert_eq!(world.drop.file(&file.file.file_name), Some(staged));
        assert_eq!(file.state, DeliveryState::Delivered);
        // Staged by the stream, each part read from the spool and matching its CRC32 (the
        // store refuses a part that does not), not whole afterwards.
        let key = keys::staged_file(&world.job_id(), &file.file.file_name);
        let calls = world.store.calls();
        let count = |operation: &str| calls.iter().filter(|c| **c == format!("{operation} {key}")).count();
        assert_eq!((count("complete_multipart"), count("upload_file")), (1, 0), "{calls:?}");
    }
}

#[tokio::test]
async fn an_export_that_fails_midway_removes_its_temporary_aborts_its_staging_and_a_rerun_delivers_once() {
    let world = World::new(MemorySource::new(200), MemoryDrop::new());
    world.source.fail_midway(1, true);
    let err = world.run(queue(1)).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Transient, "{}", err.chain());
    assert!(world.drop.operations().iter().any(|o| o.starts_with("upload_stream ")), "the stream had begun");
    assert!(world.drop.all_files().is_empty(), "left behind: {:?}", world.drop.all_files());
    assert!(world.store.open_uploads().is_empty(), "{:?}", world.store.open_uploads());
    assert!(world.store.keys("staging/").is_empty(), "nothing staged: {:?}", world.store.keys("staging/"));
    assert!(world.drop.appeared().is_empty());

    assert!(matches!(world.run(queue(2)).await.unwrap(), JobOutcome::Delivered(_)));
    world.assert_delivered_exactly_once();
    assert_eq!(world.source.exports(), 2);
}

#[tokio::test]
async fn an_sftp_failure_mid_stream_does_not_fail_the_export_and_the_file_goes_from_the_staged_copy() {
    let world = World::new(MemorySource::new(100), MemoryDrop::new());
    world.drop.fail("stream_chunk", ".part", 1, true);
    let JobOutcome::Delivered(receipt) = world.run(queue(1)).await.unwrap() else { panic!("not delivered") };
    world.assert_delivered_exactly_once();
    assert_eq!(world.source.exports(), 1);
    let operations = world.drop.operations();
    let streamed = operations.iter().position(|o| o.starts_with("upload_stream ")).expect("streamed");
    let sent = operations.iter().position(|o| o.starts_with("upload ")).expect("sent after staging");
    assert!(streamed < sent, "{operations:?}");
    let staged = world.store.object(&keys::staged_file(&world.job_id(), &receipt.files[0].file.file_name)).unwrap();
    assert_eq!(world.drop.file(&receipt.files[0].file.file_name), Some(staged));
}

#[tokio::test]
async fn a_staging_failure_mid_stream_stages_the_file_whole_and_delivers_the_streamed_temporary() {
    let world = World::new(MemorySource::new(100), MemoryDrop::new());
    // Every retry of one part fails: the stream gives up, the upload is aborted.
    world.store.fail("upload_part", "staging/", 10, true);
    let JobOutcome::Delivered(receipt) = world.run(queue(1)).await.unwrap() else { panic!("not delivered") };
    world.assert_delivered_exactly_once();
    let staged = world.store.object(&keys::staged_file(&world.job_id(), &receipt.files[0].file.file_name)).unwrap();
    assert_eq!(crate::job::sha256_hex(&staged), receipt.files[0].file.stats.sha256);
    assert_eq!(world.data_uploads(), 1, "the streamed temporary was renamed: {:?}", world.drop.operations());
}

#[tokio::test]
async fn a_newer_batch_delivered_during_the_export_skips_this_one_and_its_streamed_temporary_is_removed() {
    let world = World::new(MemorySource::new(20).with_latency(Duration::from_millis(200)), MemoryDrop::new())
        .set("STALE_BATCH", "skip");
    let newer = manifest("planned-orders-1200", OffsetDateTime::now_utc() + time::Duration::hours(6));
    let latest = crate::job::DestinationRecord {
        job_id: newer.job_id.clone(),
        received_at: newer.received_at,
        holder: None,
        generation: 1,
        writer: Some(newer.job_id.clone()),
        history: Vec::new(),
    };
    let newer_lands = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let key = keys::destination(newer.target.as_str(), &newer.request.file_name);
        world.store.insert(&key, serde_json::to_vec(&latest).unwrap());
    };
    let (outcome, ()) = tokio::join!(world.run(queue(1)), newer_lands);
    assert!(matches!(outcome, Ok(JobOutcome::Skipped(_))), "{outcome:?}");
    assert!(world.drop.operations().iter().any(|o| o.starts_with("upload_stream ")), "the stream had begun");
    assert!(world.drop.all_files().is_empty(), "left behind: {:?}", world.drop.all_files());
    assert!(world.drop.appeared().is_empty());
}

/// Runs the job, failing the test (rather than hanging it) if the run never ends.
async fn run_within(world: &World, seconds: u64) -> Result<JobOutcome> {
    tokio::time::timeout(Duration::from_secs(seconds), world.run(queue(1))).await.expect("the run never ended")
}

#[tokio::test]
async fn a_staging_part_that_never_answers_neither_holds_nor_fails_the_export_and_the_file_is_staged_whole() {
    let world = World::new(MemorySource::new(200), MemoryDrop::new()).streams(|o| {
        o.parts_in_flight = 1;
        o.stall = Duration::from_millis(50);
        o.call_timeout = Duration::from_millis(300);
    });
    // The first part's call hangs for good, as a connection that stopped answering.
    world.store.crash.arm("upload_part", "staging/", false);
    let JobOutcome::Delivered(receipt) = run_within(&world, 30).await.unwrap() else { panic!("not delivered") };
    world.assert_delivered_exactly_once();
    let file = &receipt.files[0].file;
    let staged = world.store.object(&keys::staged_file(&world.job_id(), &file.file_name)).expect("staged whole");
    assert_eq!(crate::job::sha256_hex(&staged), file.stats.sha256);
    assert_eq!(world.data_uploads(), 1, "the streamed temporary was renamed: {:?}", world.drop.operations());
}

#[tokio::test]
async fn a_staging_part_that_fails_once_ends_the_stream_at_once_without_retrying_and_the_file_is_staged_whole() {
    let world = World::new(MemorySource::new(200), MemoryDrop::new());
    // One failure: a retried part would complete the streamed upload.
    world.store.fail("upload_part", "staging/", 1, true);
    let JobOutcome::Delivered(receipt) = run_within(&world, 30).await.unwrap() else { panic!("not delivered") };
    world.assert_delivered_exactly_once();
    let file = &receipt.files[0].file;
    let key = keys::staged_file(&world.job_id(), &file.file_name);
    let staged = world.store.object(&key).expect("staged");
    assert_eq!(crate::job::sha256_hex(&staged), file.stats.sha256);
    let calls = world.store.calls();
    let count = |operation: &str| calls.iter().filter(|c| **c == format!("{operation} {key}")).count();
    assert_eq!(count("complete_multipart"), 0, "the failed part was not tried again: {calls:?}");
    assert_eq!((count("abort_multipart"), count("upload_file")), (1, 1), "{calls:?}");
}

#[tokio::test]
async fn an_sftp_folder_that_cannot_keep_up_is_dropped_from_the_export_and_the_file_goes_from_the_staged_copy() {
    let world = World::new(MemorySource::new(300), MemoryDrop::slow(16, Duration::from_millis(20)))
        .streams(|o| o.stall = Duration::from_millis(50));
    let JobOutcome::Delivered(receipt) = run_within(&world, 60).await.unwrap() else { panic!("not delivered") };
    world.assert_delivered_exactly_once();
    let operations = world.drop.operations();
    assert!(operations.iter().any(|o| o.starts_with("upload_stream ")), "{operations:?}");
    assert!(operations.iter().any(|o| o.starts_with("upload ")), "sent from the staged copy: {operations:?}");
    let name = &receipt.files[0].file.file_name;
    let staged = world.store.object(&keys::staged_file(&world.job_id(), name)).unwrap();
    assert_eq!(world.drop.file(name), Some(staged));
}

#[tokio::test]
async fn a_permanent_failure_delivering_one_file_removes_the_later_files_streamed_temporaries_marked_abandoned() {
    let source = MemorySource::with_worksheets(&[("Planned Orders", 40), ("Stock", 30), ("Routes", 20)]);
    let world = World::new(source, MemoryDrop::new());
    // The second file's first check of its final name fails for good, before any intent.
    world.drop.fail("size", "_Stock_", 1, false);
    let err = run_within(&world, 30).await.unwrap_err();
    assert_eq!((err.class, err.step), (ErrorClass::Permanent, Step::Deliver), "{}", err.chain());
    assert_eq!(world.drop.appeared().len(), 1, "the first file went");
    let left = world.drop.all_files();
    assert!(left.iter().all(|n| !n.ends_with(".part")), "temporaries left on SAP's server: {left:?}");
    let routes = world.drop.operations().into_iter().find(|o| o.starts_with("upload_stream ") && o.contains("_Routes"));
    assert!(routes.is_some(), "the third file had streamed");
    let names: Vec<String> = world.store.keys("deliveries/").into_iter().filter(|k| !k.contains("_Planned")).collect();
    assert_eq!(names.len(), 2, "{names:?}");
    for key in names {
        assert_eq!(world.store.json(&key).unwrap()["state"], "abandoned", "{key}");
    }
}

#[tokio::test]
async fn a_failed_stream_of_a_later_file_does_not_keep_an_earlier_files_temporary_on_the_server() {
    let source = MemorySource::with_worksheets(&[("Planned Orders", 40), ("Stock", 30)]);
    let world = World::new(source, MemoryDrop::new()).set("MIN_ROWS", "35");
    // The second file's stream fails (its folder is then given up), and the export fails.
    world.drop.fail("stream_chunk", "_Stock", 1, true);
    let err = run_within(&world, 30).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Permanent, "{}", err.chain());
    assert!(err.message.contains("MIN_ROWS"), "{}", err.message);
    let left = world.drop.all_files();
    assert!(left.is_empty(), "left on SAP's server: {left:?}");
    let first = world.drop.operations().into_iter().find(|o| o.starts_with("upload_stream ") && o.contains("_Planned"));
    assert!(first.is_some(), "the first file had streamed");
    let records = world.store.keys("deliveries/");
    assert!(!records.is_empty());
    for key in records {
        assert_eq!(world.store.json(&key).unwrap()["state"], "abandoned", "{key}");
    }
    assert!(world.store.open_uploads().is_empty(), "{:?}", world.store.open_uploads());
}

mod across_jobs;
mod events;
mod rerun;

#[tokio::test]
async fn a_manifest_the_webhook_would_not_write_is_refused_for_good_naming_the_field_and_nothing_is_written() {
    for (field, tamper) in [
        ("fileName", json!({"fileName": "../../../../tmp/evil-PF"})),
        ("worksheets[0]", json!({"worksheets": ["../x\u{0}"]})),
        ("target", json!({"target": "QA9"})),
    ] {
        let world = World::new(MemorySource::new(5), MemoryDrop::new());
        let mut manifest = world.store.json(&world.job_key()).unwrap();
        for (k, v) in tamper.as_object().unwrap() {
            manifest[k] = v.clone();
        }
        world.store.insert(&world.job_key(), serde_json::to_vec(&manifest).unwrap());
        let err = world.run(queue(1)).await.unwrap_err();
        assert_eq!((err.class, err.step), (ErrorClass::Permanent, Step::Manifest), "{field}: {}", err.chain());
        assert!(err.message.contains(&format!("{field}:")), "{field}: {}", err.message);
        assert_eq!(world.source.exports(), 0, "{field}");
        let written: Vec<String> = ["locks/", "staging/", "deliveries/", "latest/", "receipts/"]
            .iter()
            .flat_map(|p| world.store.keys(p))
            .collect();
        assert!(written.is_empty(), "{field}: {written:?}");
        assert!(world.drop.all_files().is_empty());
    }
}
