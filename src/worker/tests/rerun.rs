//! An operator's re-runs: a mistyped job, a re-send under records of its own, a fresh
//! export, an older batch let through once; and the failure history they read.

use super::*;

fn rerun(world: &World, change: impl FnOnce(&mut RerunRequest)) -> RerunRequest {
    let mut request = RerunRequest::plain(world.job_key());
    request.requested_by = Some("ops@example".into());
    change(&mut request);
    request
}

async fn run_rerun(world: &World, request: RerunRequest) -> Result<JobOutcome> {
    world.worker().run(&request.job_key.clone(), far(), Trigger::Console, Some(request)).await
}

#[tokio::test]
async fn a_rerun_of_a_job_that_does_not_exist_is_not_run_and_leaves_no_record() {
    let world = World::new(MemorySource::new(3), MemoryDrop::new());
    for key in ["jobs/0123456789abcdef0123456789abcdef.json", "jobs/oops.json"] {
        let outcome = world.worker().run(key, far(), Trigger::Console, Some(RerunRequest::plain(key))).await;
        let Ok(JobOutcome::NotRun(reason)) = outcome else { panic!("{key}: {outcome:?}") };
        assert!(reason.contains(key), "{reason}");
    }
    assert!(world.store.keys("failed/").is_empty(), "{:?}", world.store.keys("failed/"));
    assert!(world.store.keys("locks/").is_empty());
    assert_eq!(world.source.exports(), 0);
}

#[tokio::test]
async fn a_resend_delivers_once_more_under_its_own_records_and_the_same_resend_again_delivers_nothing() {
    let world = World::new(MemorySource::new(3), MemoryDrop::new());
    assert!(matches!(world.run(queue(1)).await.unwrap(), JobOutcome::Delivered(_)));
    let first_receipt = world.receipt().unwrap();
    let first_record = world.store.object(&keys::delivery(&world.job_id(), &world.data_name())).unwrap();
    // SAP took the file and lost it.
    world.drop.take_all();
    let request = rerun(&world, |r| {
        r.resend = true;
        r.resend_id = Some("r1".into());
    });
    let JobOutcome::Delivered(receipt) = run_rerun(&world, request.clone()).await.unwrap() else { panic!("not sent") };
    assert_eq!(world.drop.appeared(), [world.data_name(), world.data_name()]);
    let asked = receipt.rerun.as_ref().expect("the receipt says who asked");
    assert_eq!(
        (asked.requested_by.as_str(), asked.resend.as_ref().map(|r| r.to_string())),
        ("ops@example", Some("r1".into()))
    );
    let resend_receipt = world.store.json(&format!("receipts/{}/resends/r1.json", world.job_id())).unwrap();
    assert_eq!(resend_receipt["rerun"]["requestedBy"], json!("ops@example"));
    // The job's own records are as they were.
    assert_eq!(world.receipt().unwrap(), first_receipt);
    assert_eq!(world.store.object(&keys::delivery(&world.job_id(), &world.data_name())).unwrap(), first_record);
    assert!(world
        .store
        .object(&format!("deliveries/{}/resends/r1/{}.json", world.job_id(), world.data_name()))
        .is_some());

    // The same request again (a retried invocation): nothing more is sent.
    assert_eq!(run_rerun(&world, request).await.unwrap(), JobOutcome::AlreadyDelivered);
    assert_eq!(world.drop.appeared().len(), 2);
    assert!(world.drop.all_files().iter().all(|n| !n.ends_with(".part")));
}

#[tokio::test]
async fn a_resend_of_a_job_never_delivered_is_not_run() {
    let world = World::new(MemorySource::new(3), MemoryDrop::new());
    let outcome = run_rerun(&world, rerun(&world, |r| r.resend = true)).await.unwrap();
    let JobOutcome::NotRun(reason) = outcome else { panic!("{outcome:?}") };
    assert!(reason.contains("without resend"), "{reason}");
    assert!(world.drop.appeared().is_empty());
    assert!(world.store.keys("failed/").is_empty());
}

#[tokio::test]
async fn a_fresh_export_exports_again_instead_of_sending_the_staged_copy() {
    let mut world = World::new(MemorySource::new(3), MemoryDrop::new());
    // Staged, then the delivery failed before any file was renamed.
    world.drop.fail("open", "", 100, true);
    assert!(world.run(queue(1)).await.is_err());
    assert!(world.store.object(&keys::staged_index(&world.job_id())).is_some());
    assert_eq!(world.source.exports(), 1);
    world.drop = MemoryDrop::new();
    let outcome = run_rerun(&world, rerun(&world, |r| r.fresh_export = true)).await.unwrap();
    assert!(matches!(outcome, JobOutcome::Delivered(_)), "{outcome:?}");
    assert_eq!(world.source.exports(), 2, "exported again");
    assert_eq!(world.receipt().unwrap()["rerun"]["freshExport"], json!(true));
    world.assert_delivered_exactly_once();
}

#[tokio::test]
async fn a_fresh_export_of_a_job_with_a_file_maybe_in_sap_is_not_run_and_the_plain_rerun_it_points_to_delivers_once() {
    let world = World::new(MemorySource::new(3), MemoryDrop::new());
    // Cut right after the rename: the intent stands, the file is in SAP's folder.
    world.drop.crash.arm("rename", ".csv", true);
    world.crash_run(&world.drop.crash).await;
    world.expire_lease();
    let outcome = run_rerun(&world, rerun(&world, |r| r.fresh_export = true)).await.unwrap();
    let JobOutcome::NotRun(reason) = outcome else { panic!("{outcome:?}") };
    assert!(reason.contains("without freshExport"), "{reason}");
    assert_eq!(world.source.exports(), 1);
    let outcome = run_rerun(&world, rerun(&world, |_| {})).await.unwrap();
    assert!(matches!(outcome, JobOutcome::Delivered(_)), "{outcome:?}");
    assert_eq!(world.source.exports(), 1, "the staged copy resumed");
    world.assert_delivered_exactly_once();
}

#[tokio::test]
async fn allow_stale_lets_one_older_batch_through_and_only_that_one() {
    let world = World::new(MemorySource::new(3), MemoryDrop::new());
    let at = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
    let older = world.add_job("older-batch", at - time::Duration::HOUR);
    let newer = world.add_job("newer-batch", at);
    assert!(matches!(world.worker().run_job(&newer, far(), queue(1)).await.unwrap(), JobOutcome::Delivered(_)));
    let err = world.worker().run_job(&older, far(), queue(1)).await.unwrap_err();
    assert!(err.message.contains("is older than"), "{}", err.chain());
    let mut request = RerunRequest::plain(older.clone());
    request.allow_stale = true;
    let outcome = world.worker().run(&older, far(), Trigger::Console, Some(request)).await.unwrap();
    assert!(matches!(outcome, JobOutcome::Delivered(_)), "{outcome:?}");
    // A third, older still, is refused as before: the override was that job's alone.
    let oldest = world.add_job("oldest-batch", at - time::Duration::hours(2));
    assert!(world.worker().run_job(&oldest, far(), queue(1)).await.is_err());
}

#[tokio::test]
async fn every_failure_is_kept_in_the_history_and_a_repeated_permanent_one_is_not_nested_or_recorded_again() {
    let world = World::new(MemorySource::new(3), MemoryDrop::new());
    world.source.fail(1, true);
    assert!(world.run(queue(1)).await.is_err());
    world.source.fail(1, false);
    assert!(world.run(queue(2)).await.is_err());
    let history = world.store.keys(&keys::failure_history(&world.job_id()));
    assert_eq!(history.len(), 2, "{history:?}");
    let first = world.store.json(&history[0]).unwrap();
    assert_eq!((first["class"].clone(), first["receiveCount"].clone()), (json!("transient"), json!(1)));
    assert_eq!((first["target"].clone(), first["eventId"].clone()), (json!("PF2"), json!(JOB_EVENT)));
    assert_eq!(first["fileName"], json!("PlannedOrders-PF"));
    let latest = world.failure().unwrap();
    assert_eq!((latest["class"].clone(), latest["final"].clone()), (json!("permanent"), json!(true)));

    // Redriven twice: the same message each time, the record as first written.
    for n in [3, 4] {
        let err = world.run(queue(n)).await.unwrap_err();
        assert_eq!(err.message.matches("failed permanently before").count(), 1, "{}", err.message);
    }
    assert_eq!(world.failure().unwrap(), latest);
    assert_eq!(world.store.keys(&keys::failure_history(&world.job_id())).len(), 2);
}

fn resend(world: &World, id: &str) -> RerunRequest {
    rerun(world, |r| {
        r.resend = true;
        r.resend_id = Some(id.into());
    })
}

#[tokio::test]
async fn a_resend_is_for_a_delivered_job_only_not_one_failed_even_for_good() {
    let world = World::new(MemorySource::new(3), MemoryDrop::new());
    world.drop.fail("open", "", 100, true);
    // Failed once (the queue tries again), then on its last receive (for good): either way
    // the job is still its own to finish, and a second writer of it could not be ordered.
    for receive in [1, 5] {
        assert!(world.run(queue(receive)).await.is_err());
        let outcome = run_rerun(&world, resend(&world, &format!("r{receive}"))).await.unwrap();
        let JobOutcome::NotRun(reason) = outcome else { panic!("receive {receive}: {outcome:?}") };
        assert!(reason.contains("delivered job") && reason.contains("without resend"), "{reason}");
    }
    assert!(world.store.keys(&format!("receipts/{}/", world.job_id())).is_empty());
    assert!(world.store.keys(&format!("failed/{}/resends/", world.job_id())).is_empty());
}

#[tokio::test]
async fn a_resend_whose_staged_copy_has_expired_is_not_run_unless_it_exports_afresh() {
    let world = World::new(MemorySource::new(3), MemoryDrop::new());
    assert!(matches!(world.run(queue(1)).await.unwrap(), JobOutcome::Delivered(_)));
    world.drop.take_all();
    // The lifecycle rule expired the staged copy.
    for key in world.store.keys(&format!("staging/{}/", world.job_id())) {
        world.store.remove(&key);
    }
    let outcome = run_rerun(&world, resend(&world, "r1")).await.unwrap();
    let JobOutcome::NotRun(reason) = outcome else { panic!("{outcome:?}") };
    assert!(reason.contains("fresh export") && reason.contains("_staged.json"), "{reason}");
    assert_eq!(world.source.exports(), 1);
    assert!(world.store.keys(&format!("staging/{}/", world.job_id())).is_empty(), "nothing staged over the job's");
    let mut fresh = resend(&world, "r2");
    fresh.fresh_export = true;
    assert!(matches!(run_rerun(&world, fresh).await.unwrap(), JobOutcome::Delivered(_)));
    assert_eq!(world.source.exports(), 2);
    let own = world.store.keys(&format!("staging/{}/resends/r2/", world.job_id()));
    assert!(!own.is_empty(), "a fresh export's re-send stages under its own folder");
}

#[tokio::test]
async fn a_resend_never_reads_a_missing_file_as_taken_by_sap_and_its_failure_stays_its_own() {
    let world = World::new(MemorySource::new(3), MemoryDrop::new());
    assert!(matches!(world.run(queue(1)).await.unwrap(), JobOutcome::Delivered(_)));
    world.drop.take_all();
    // The re-send's rename lands but its answer is lost: the intent stands, the file is in
    // SAP's folder; then SAP takes it, and the re-send is asked for again.
    world.drop.crash.arm("rename", ".csv", true);
    let worker = world.worker();
    let request = resend(&world, "r1");
    let job_key = request.job_key.clone();
    tokio::select! {
        outcome = worker.run(&job_key, far(), Trigger::Console, Some(request.clone())) => {
            panic!("the re-send ended instead of crashing: {outcome:?}")
        }
        () = world.drop.crash.struck() => {}
    }
    world.drop.take_all();
    world.expire_lease();
    let err = run_rerun(&world, request).await.unwrap_err();
    assert!(err.message.contains("unknown"), "{}", err.chain());
    assert!(world.store.object(&format!("receipts/{}/resends/r1.json", world.job_id())).is_none());
    assert!(world.failure().is_none(), "the delivered job's own latest failure: {:?}", world.failure());
    let own = world.store.json(&format!("failed/{}/resends/r1.json", world.job_id())).expect("the re-send's failure");
    assert_eq!(own["class"], json!("permanent"));
}
