//! Two jobs of one SAP destination: an older batch A and a newer batch B, interleaved at every
//! crash point of each, in both name modes, with and without SAP taking the file between
//! them. SAP reads the file it gets last, so the promise is about order: no file of A ever
//! arrives after one of B, B arrives exactly once, and A has a receipt only if its file arrived.

use super::*;
use crate::job::FileNameTemplate;

const OLDER: &str = "planned-orders-0600";
const NEWER: &str = "planned-orders-0601";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Names {
    Timestamped,
    /// `FILE_NAME_TEMPLATE={fileName}.csv` with `SFTP_EXISTING_FILE=overwrite`.
    FixedOverwrite,
}

struct TwoJobs {
    world: World,
    older: String,
    newer: String,
}

impl TwoJobs {
    fn new(names: Names) -> Self {
        Self::with_folder(names, MemoryDrop::new())
    }

    fn with_folder(names: Names, drop: Arc<MemoryDrop>) -> Self {
        let mut world = World::new(MemorySource::new(6), drop);
        if names == Names::FixedOverwrite {
            let fixed =
                FileNameTemplate { single: "{fileName}.csv".into(), several: "{fileName}_{worksheet}.csv".into() };
            world.source = Arc::clone(&world.source).with_file_names(fixed);
            world = world.set("FILE_NAME_TEMPLATE", "{fileName}.csv").set("SFTP_EXISTING_FILE", "overwrite");
        }
        // B a second after A, as two Maestro batches in a row.
        let at = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
        let older = world.add_job(OLDER, at);
        let newer = world.add_job(NEWER, at + time::Duration::SECOND);
        Self { world, older, newer }
    }

    async fn run(&self, key: &str, trigger: Trigger) -> Result<JobOutcome> {
        self.world.worker().run_job(key, far(), trigger).await
    }

    async fn crash(&self, key: &str, crash: &crate::memory::Crash) {
        let worker = self.world.worker();
        tokio::select! {
            outcome = worker.run_job(key, far(), queue(1)) => panic!("the run ended instead of crashing: {outcome:?}"),
            () = crash.struck() => {}
        }
    }

    /// Which job each arrival in SAP's folder was, by the SHA-256 of what it staged.
    fn arrivals(&self) -> Vec<&'static str> {
        let staged = |event: &str| {
            let id = crate::job::job_id(event);
            self.world
                .store
                .keys(&format!("staging/{id}/"))
                .into_iter()
                .filter(|k| !k.ends_with("_staged.json"))
                .map(|k| crate::job::sha256_hex(&self.world.store.object(&k).unwrap_or_default()))
                .collect::<Vec<_>>()
        };
        let (a, b) = (staged(OLDER), staged(NEWER));
        self.world
            .drop
            .arrivals()
            .iter()
            .map(|(name, sha)| match () {
                () if a.contains(sha) => "A",
                () if b.contains(sha) => "B",
                () => panic!("{name} arrived with bytes neither job staged"),
            })
            .collect()
    }

    fn receipt(&self, event: &str) -> Option<Value> {
        self.world.store.json(&keys::receipt(&crate::job::job_id(event)))
    }
}

/// Where the crashing job stops: (what, in the folder?, operation, name part, after?, skip).
/// The name part carries the job's id where the operation is on the job's own records.
fn crash_points(job: &str) -> Vec<(&'static str, bool, &'static str, String, bool, u32)> {
    let id = crate::job::job_id(job);
    vec![
        ("with its temporary complete, before its claim", false, "create", "latest/".into(), false, 0),
        ("claimed, before its intent", false, "create", "latest/".into(), true, 0),
        ("after its intent, before its rename", false, "put", format!("deliveries/{id}/"), true, 1),
        ("after its rename", true, "rename", ".csv".into(), true, 0),
        ("after its delivered mark", false, "put", format!("deliveries/{id}/"), true, 2),
        ("after letting go of its claim", false, "replace", "latest/".into(), true, 0),
        ("before its receipt", false, "put", format!("receipts/{id}"), false, 0),
    ]
}

fn is_refusal(err: &Error) -> bool {
    let (a, b) = (crate::job::job_id(OLDER), crate::job::job_id(NEWER));
    err.class == ErrorClass::Permanent && err.message.contains(a.as_str()) && err.message.contains(b.as_str())
}

fn is_unknown(err: &Error) -> bool {
    err.class == ErrorClass::Permanent && err.message.contains("is unknown")
}

#[tokio::test]
async fn two_jobs_of_one_destination_crashed_at_every_point_never_put_the_older_after_the_newer() {
    for names in [Names::Timestamped, Names::FixedOverwrite] {
        for older_crashes in [true, false] {
            let (crashing, other) = if older_crashes { (OLDER, NEWER) } else { (NEWER, OLDER) };
            for (point, in_folder, operation, name, after, skip) in crash_points(crashing) {
                for sap_takes in [false, true] {
                    let jobs = TwoJobs::new(names);
                    let key = |event: &str| if event == OLDER { jobs.older.clone() } else { jobs.newer.clone() };
                    let case = format!("{names:?}: {crashing} crashed {point}, SAP takes files between: {sap_takes}");
                    let crash = if in_folder { &jobs.world.drop.crash } else { &jobs.world.store.crash };
                    crash.arm_nth(operation, name.as_str(), after, skip);
                    jobs.crash(&key(crashing), crash).await;
                    if sap_takes {
                        jobs.world.drop.take_all();
                    }
                    // The crashed run's lease, and any claim it held, run out.
                    jobs.world.expire_lease();
                    let other_outcome = jobs.run(&key(other), queue(1)).await;
                    if sap_takes {
                        jobs.world.drop.take_all();
                    }
                    let rerun = jobs.run(&key(crashing), queue(2)).await;
                    let (older, newer) = if older_crashes { (rerun, other_outcome) } else { (other_outcome, rerun) };
                    check_two_jobs(&jobs, &case, older, newer);
                }
            }
        }
    }
}

/// Every promise of two jobs of one destination, whatever happened between them.
fn check_two_jobs(jobs: &TwoJobs, case: &str, older: Result<JobOutcome>, newer: Result<JobOutcome>) {
    let arrivals = jobs.arrivals();
    let ops = jobs.world.drop.operations();
    assert!(
        matches!(newer, Ok(JobOutcome::Delivered(_) | JobOutcome::AlreadyDelivered)),
        "{case}: the newer batch {newer:?}"
    );
    assert_eq!(arrivals.iter().filter(|j| **j == "B").count(), 1, "{case}: arrivals {arrivals:?}, ops {ops:?}");
    let first_b = arrivals.iter().position(|j| *j == "B").unwrap_or(usize::MAX);
    assert!(
        arrivals.iter().enumerate().all(|(i, j)| *j == "B" || i < first_b),
        "{case}: the older batch arrived after the newer: {arrivals:?}, ops {ops:?}"
    );
    assert!(jobs.receipt(NEWER).is_some(), "{case}: no receipt for the newer batch");
    let older_arrived = arrivals.contains(&"A");
    match &older {
        Ok(JobOutcome::Delivered(_) | JobOutcome::AlreadyDelivered) => {
            assert!(older_arrived, "{case}: a receipt for a file SAP never got; ops {ops:?}")
        }
        Err(err) if is_refusal(err) || (older_arrived && is_unknown(err)) => {
            assert!(jobs.receipt(OLDER).is_none(), "{case}: refused, yet a receipt")
        }
        other => panic!("{case}: the older batch ended {other:?}; arrivals {arrivals:?}, ops {ops:?}"),
    }
    let left: Vec<String> = jobs.world.drop.all_files().into_iter().filter(|n| n.ends_with(".part")).collect();
    assert!(left.is_empty(), "{case}: temporaries left {left:?}");
    let holders: Vec<Value> = jobs
        .world
        .store
        .keys("latest/")
        .iter()
        .filter_map(|k| jobs.world.store.json(k)?.get("holder").cloned())
        .collect();
    assert!(holders.is_empty(), "{case}: a claim still held: {holders:?}");
}

#[tokio::test]
async fn an_intent_whose_temporary_someone_else_removed_is_never_read_as_taken_once_another_job_wrote_the_name() {
    // Fixed names: B writes the very name A's intent is for.
    for names in [Names::FixedOverwrite] {
        let jobs = TwoJobs::new(names);
        let a = crate::job::job_id(OLDER);
        jobs.world.store.crash.arm_nth("put", format!("deliveries/{a}/"), true, 1);
        jobs.crash(&jobs.older, &jobs.world.store.crash).await;
        // An outsider (an operator, an earlier version's sweep) removes A's temporary.
        for name in jobs.world.drop.all_files().into_iter().filter(|n| n.contains(a.as_str())) {
            jobs.world.drop.take(&name);
        }
        jobs.world.expire_lease();
        assert!(matches!(jobs.run(&jobs.newer, queue(1)).await, Ok(JobOutcome::Delivered(_))), "{names:?}");
        jobs.world.drop.take_all();
        let err = jobs.run(&jobs.older, queue(2)).await.unwrap_err();
        assert!(is_unknown(&err) || is_refusal(&err), "{names:?}: {err:?}");
        assert!(jobs.receipt(OLDER).is_none(), "{names:?}: a receipt for a file SAP never got");
        assert_eq!(jobs.arrivals(), ["B"], "{names:?}");
    }
}

#[tokio::test]
async fn with_nobody_else_at_the_name_an_intent_with_both_files_gone_is_read_as_taken_by_sap() {
    let jobs = TwoJobs::new(Names::FixedOverwrite);
    jobs.world.drop.crash.arm("rename", ".csv", true);
    jobs.crash(&jobs.older, &jobs.world.drop.crash).await;
    jobs.world.drop.take_all();
    jobs.world.expire_lease();
    let Ok(JobOutcome::Delivered(receipt)) = jobs.run(&jobs.older, queue(2)).await else { panic!("not delivered") };
    assert!(receipt.files[0].taken_by_sap);
    assert_eq!(jobs.arrivals(), ["A"]);
}

#[tokio::test]
async fn two_jobs_of_one_destination_run_at_once_over_a_slow_link_deliver_in_batch_order() {
    for names in [Names::Timestamped, Names::FixedOverwrite] {
        for newer_first in [false, true] {
            // A slow link: each upload crawls, so the two runs overlap from export to rename.
            let jobs = TwoJobs::with_folder(names, MemoryDrop::slow(4, Duration::from_millis(5)));
            let (first, second) = if newer_first { (&jobs.newer, &jobs.older) } else { (&jobs.older, &jobs.newer) };
            let second_later = async {
                tokio::time::sleep(Duration::from_millis(20)).await;
                jobs.run(second, queue(1)).await
            };
            let (one, two) = tokio::join!(jobs.run(first, queue(1)), second_later);
            let (older, newer) = if newer_first { (two, one) } else { (one, two) };
            check_two_jobs(&jobs, &format!("{names:?}, newer first: {newer_first}"), older, newer);
        }
    }
}

#[tokio::test]
async fn two_batches_received_in_the_same_second_are_ordered_by_job_id() {
    let world = World::new(MemorySource::new(3), MemoryDrop::new());
    let at = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
    let (x, y) = ("same-second-x", "same-second-y");
    let (kx, ky) = (world.add_job(x, at), world.add_job(y, at));
    let (idx, idy) = (crate::job::job_id(x), crate::job::job_id(y));
    let (newer_key, older_key, older_id) = if idx > idy { (kx, ky, idy) } else { (ky, kx, idx) };
    assert!(matches!(world.worker().run_job(&newer_key, far(), queue(1)).await, Ok(JobOutcome::Delivered(_))));
    let err = world.worker().run_job(&older_key, far(), queue(1)).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Permanent);
    assert!(err.message.contains(older_id.as_str()) && err.message.contains("older than"), "{}", err.message);
}

#[tokio::test]
async fn a_job_waits_while_another_jobs_live_run_holds_the_destination_then_goes_on_in_order() {
    let jobs = TwoJobs::new(Names::Timestamped);
    // A live run of A holds the claim (its lease not run out) for a moment, then lets go.
    let destination = keys::destination("PF2", "PlannedOrders-PF");
    let a = crate::job::job_id(OLDER);
    let held = json!({"jobId": a, "receivedAt": "2000-01-01T00:00:00Z", "generation": 1, "writer": a,
        "holder": {"jobId": a, "owner": "a-live", "until": "2999-01-01T00:00:00Z"}});
    jobs.world.store.insert(&destination, serde_json::to_vec(&held).unwrap());
    let worker = {
        let mut worker = jobs.world.worker();
        worker.settings.destination_poll = Duration::from_millis(20);
        worker
    };
    let let_go = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut released = held.clone();
        released.as_object_mut().unwrap().remove("holder");
        jobs.world.store.insert(&destination, serde_json::to_vec(&released).unwrap());
    };
    let (outcome, ()) = tokio::join!(worker.run_job(&jobs.newer, far(), queue(1)), let_go);
    assert!(matches!(outcome, Ok(JobOutcome::Delivered(_))), "{outcome:?}");
    let claim = jobs.world.store.json(&destination).unwrap();
    assert_eq!(claim["jobId"], json!(crate::job::job_id(NEWER)));
    assert_eq!(claim["generation"], 2, "a new writer, a new generation");
    assert!(claim.get("holder").is_none(), "{claim}");
    let waited = jobs.world.store.calls().iter().filter(|c| c.starts_with("get latest/")).count();
    assert!(waited > 3, "looked again while the claim was held: {waited}");
}
