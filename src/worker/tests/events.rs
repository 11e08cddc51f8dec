//! Delivery events and the SAP pickup watchdog against in-memory ports: one `File Delivered`
//! per file and receive, a `Job Failed` once, a bus that fails never touching the delivery,
//! and a late file counted every check but published once, done once SAP took it.

use super::*;
use crate::events::{DetailType, Publisher, StatusCode};
use crate::memory::MemoryBus;

fn with_bus(world: &World, bus: &Arc<MemoryBus>) -> TestWorker {
    world.worker().with_events(Publisher { bus: Arc::new(Arc::clone(bus)), staging_bucket: "staging-b".into() })
}

async fn run_with(world: &World, bus: &Arc<MemoryBus>, trigger: Trigger) -> Result<JobOutcome> {
    with_bus(world, bus).run_job(&world.job_key(), far(), trigger).await
}

/// The delivered files' `updatedAt` moved `minutes` into the past, as if delivered then.
fn deliver_earlier(world: &World, minutes: i64) {
    let key = keys::receipt(&world.job_id());
    let mut receipt = world.store.json(&key).expect("a receipt");
    let then = OffsetDateTime::now_utc() - time::Duration::minutes(minutes);
    for file in receipt["files"].as_array_mut().expect("files") {
        file["updatedAt"] = json!(then.format(&time::format_description::well_known::Rfc3339).unwrap());
    }
    world.store.insert(&key, serde_json::to_vec(&receipt).unwrap());
}

/// `size` calls made on the SAP folder so far (the delivery makes some of its own).
fn stats(world: &World) -> usize {
    world.drop.operations().iter().filter(|o| o.starts_with("size ")).count()
}

async fn check(world: &World, bus: &Arc<MemoryBus>) -> PickupReport {
    with_bus(world, bus).check_pickups(&PickupCheck::default(), far()).await.expect("the check runs")
}

#[tokio::test]
async fn a_delivered_job_publishes_one_file_delivered_per_file_and_a_rerun_that_finds_it_delivered_none() {
    let world = World::new(MemorySource::with_worksheets(&[("Planned Orders", 4), ("Orders", 2)]), MemoryDrop::new());
    let bus = MemoryBus::new();
    let Ok(JobOutcome::Delivered(receipt)) = run_with(&world, &bus, queue(1)).await else { panic!("not delivered") };
    assert_eq!(run_with(&world, &bus, queue(2)).await.unwrap(), JobOutcome::AlreadyDelivered);
    assert_eq!(run_with(&world, &bus, Trigger::Console).await.unwrap(), JobOutcome::AlreadyDelivered);

    let published = bus.published();
    assert_eq!(published.len(), 2, "{published:#?}");
    for (event, file) in published.iter().zip(&receipt.files) {
        let detail = &event.detail;
        assert_eq!(event.detail_type, DetailType::FileDelivered);
        assert_eq!(detail.job_id.as_str(), world.job_id());
        assert_eq!(detail.event_id.as_deref(), Some(JOB_EVENT));
        assert_eq!(detail.target.as_ref().map(Target::as_str), Some("PF2"));
        assert_eq!(detail.file_name, file.file.file_name);
        assert_eq!(detail.remote_path.as_deref(), Some(format!("/in/{}", file.file.file_name).as_str()));
        assert_eq!(detail.remote_directory.as_deref(), Some("/in"));
        assert_eq!((detail.rows, detail.bytes), (Some(file.file.stats.rows), Some(file.file.stats.bytes)));
        assert_eq!(detail.sha256.as_deref(), Some(file.file.stats.sha256.as_str()));
        assert_eq!(detail.status_code, StatusCode::Completed);
        assert_eq!((detail.failure_code.as_deref(), detail.failure_message.as_deref()), (None, None));
        assert!(detail.start_timestamp <= detail.end_timestamp, "{detail:?}");
        let staged = detail.staged_object.as_ref().expect("the staged copy");
        assert_eq!(staged.bucket, "staging-b");
        assert_eq!(staged.key, keys::staged_file(&world.job_id(), &file.file.file_name));
    }
}

#[tokio::test]
async fn a_job_that_fails_for_good_publishes_job_failed_once_and_its_redrive_nothing() {
    let world = World::new(MemorySource::new(3), MemoryDrop::new());
    world.source.fail(1, false);
    let bus = MemoryBus::new();
    assert!(run_with(&world, &bus, queue(1)).await.is_err());
    // The dead-letter queue's message sent back: the same permanent failure, met again.
    assert!(run_with(&world, &bus, queue(1)).await.is_err());
    let published = bus.published();
    assert_eq!(published.len(), 1, "{published:#?}");
    let detail = &published[0].detail;
    assert_eq!(published[0].detail_type, DetailType::JobFailed);
    assert_eq!(detail.status_code, StatusCode::Failed);
    assert_eq!(detail.failure_code.as_deref(), Some("permanent:fetch"));
    assert!(detail.failure_message.as_deref().is_some_and(|m| !m.is_empty()), "{detail:?}");
    assert_eq!(
        (detail.file_name.as_str(), detail.target.as_ref().map(Target::as_str)),
        ("PlannedOrders-PF", Some("PF2"))
    );
    assert_eq!((detail.remote_path.as_deref(), detail.bytes, detail.staged_object.as_ref()), (None, None, None));
}

#[tokio::test]
async fn a_transient_failure_that_will_be_retried_publishes_nothing() {
    let world = World::new(MemorySource::new(3), MemoryDrop::new());
    world.source.fail(1, true);
    let bus = MemoryBus::new();
    assert!(run_with(&world, &bus, queue(1)).await.is_err());
    assert!(bus.published().is_empty(), "{:?}", bus.published());
}

#[tokio::test]
async fn a_bus_that_keeps_failing_leaves_the_delivery_and_its_receipt_intact() {
    let world = World::new(MemorySource::new(3), MemoryDrop::new());
    let bus = MemoryBus::new();
    bus.fail_calls(100);
    assert!(matches!(run_with(&world, &bus, queue(1)).await.unwrap(), JobOutcome::Delivered(_)));
    world.assert_delivered_exactly_once();
    assert!(bus.published().is_empty());
    assert!(bus.calls() > 1, "retried within the deadline: {} calls", bus.calls());
    assert!(world.failure().is_none(), "a publishing failure is not the job's");
}

#[tokio::test]
async fn an_entry_the_bus_refused_is_published_again_and_an_entry_it_took_never() {
    let world = World::new(MemorySource::with_worksheets(&[("Planned Orders", 4), ("Orders", 2)]), MemoryDrop::new());
    let bus = MemoryBus::new();
    bus.refuse_entries(1);
    assert!(matches!(run_with(&world, &bus, queue(1)).await.unwrap(), JobOutcome::Delivered(_)));
    let names: Vec<String> = bus.published().into_iter().map(|e| e.detail.file_name).collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert_ne!(names[0], names[1], "each file once: {names:?}");
    assert_eq!(bus.calls(), 2);
}

#[tokio::test]
async fn a_file_sap_leaves_past_the_limit_is_counted_each_check_published_once_and_done_once_taken() {
    let world = World::new(MemorySource::new(3), MemoryDrop::new());
    let bus = MemoryBus::new();
    assert!(matches!(run_with(&world, &bus, queue(1)).await.unwrap(), JobOutcome::Delivered(_)));
    let delivered_events = bus.published().len();

    // Within the limit (60 minutes by default): not due, nothing looked at.
    let before = stats(&world);
    let report = check(&world, &bus).await;
    assert_eq!((report.not_due, report.checked), (1, 0), "{report:?}");
    assert_eq!(stats(&world), before);

    deliver_earlier(&world, 90);
    let report = check(&world, &bus).await;
    assert_eq!(report.not_picked_up.len(), 1, "{report:?}");
    assert_eq!(report.not_picked_up[0].remote_path, format!("/in/{}", world.data_name()));
    assert!(report.not_picked_up[0].waiting_minutes >= 89, "{report:?}");
    let late: Vec<_> = bus.published().into_iter().skip(delivered_events).collect();
    assert_eq!(late.len(), 1, "{late:#?}");
    assert_eq!(late[0].detail_type, DetailType::FileNotPickedUp);
    assert_eq!(late[0].detail.pickup_sla_minutes, Some(60));

    // Still there: counted again, not published again; and the file never touched.
    let report = check(&world, &bus).await;
    assert_eq!(report.not_picked_up.len(), 1);
    assert_eq!(bus.published().len(), delivered_events + 1);
    assert!(world.drop.operations().iter().all(|o| !o.starts_with("remove ") || o.contains(".part")));

    world.drop.take_all();
    let report = check(&world, &bus).await;
    assert_eq!((report.checked, report.picked_up, report.not_picked_up.len()), (1, 1, 0), "{report:?}");
    let report = check(&world, &bus).await;
    assert_eq!(report, PickupReport::default(), "a file gone is not looked at again");
}

#[tokio::test]
async fn a_target_whose_limit_is_zero_is_not_watched() {
    let world = World::new(MemorySource::new(3), MemoryDrop::new()).set("PICKUP_SLA_MINUTES_PF2", "0");
    let bus = MemoryBus::new();
    assert!(matches!(run_with(&world, &bus, queue(1)).await.unwrap(), JobOutcome::Delivered(_)));
    deliver_earlier(&world, 600);
    let before = stats(&world);
    let report = check(&world, &bus).await;
    assert_eq!(report, PickupReport::default());
    assert_eq!(stats(&world), before);
}

#[tokio::test]
async fn an_older_receipt_whose_file_a_newer_delivery_replaced_is_not_watched_for_it() {
    let world = World::new(MemorySource::new(3), MemoryDrop::new());
    let bus = MemoryBus::new();
    assert!(matches!(run_with(&world, &bus, queue(1)).await.unwrap(), JobOutcome::Delivered(_)));
    deliver_earlier(&world, 120);
    // A second receipt of the same path, delivered later (a re-send).
    let mut newer = world.receipt().unwrap();
    let later = OffsetDateTime::now_utc() - time::Duration::minutes(70);
    newer["files"][0]["updatedAt"] = json!(later.format(&time::format_description::well_known::Rfc3339).unwrap());
    world.store.insert(&format!("receipts/{}/resends/r1.json", world.job_id()), serde_json::to_vec(&newer).unwrap());
    let report = check(&world, &bus).await;
    assert_eq!(report.not_picked_up.len(), 1, "only the newer delivery is late: {report:?}");
    assert!(report.not_picked_up[0].waiting_minutes < 100, "{report:?}");
}

#[tokio::test]
async fn a_late_file_whose_event_the_bus_refused_is_announced_at_the_next_check() {
    let world = World::new(MemorySource::new(3), MemoryDrop::new());
    let bus = MemoryBus::new();
    assert!(matches!(run_with(&world, &bus, queue(1)).await.unwrap(), JobOutcome::Delivered(_)));
    deliver_earlier(&world, 90);
    let before = bus.published().len();
    // Every attempt of this check refused.
    bus.refuse_entries(4);
    assert_eq!(check(&world, &bus).await.not_picked_up.len(), 1);
    assert_eq!(bus.published().len(), before, "nothing published");
    assert_eq!(check(&world, &bus).await.not_picked_up.len(), 1);
    let late: Vec<_> = bus.published().into_iter().skip(before).collect();
    assert_eq!(late.len(), 1, "announced once, at the next check: {late:#?}");
    assert_eq!(late[0].detail_type, DetailType::FileNotPickedUp);
}

#[tokio::test]
async fn a_late_file_of_a_fresh_export_resend_names_the_resends_own_staged_copy() {
    let world = World::new(MemorySource::new(3), MemoryDrop::new());
    let bus = MemoryBus::new();
    assert!(matches!(run_with(&world, &bus, queue(1)).await.unwrap(), JobOutcome::Delivered(_)));
    world.drop.take_all();
    let mut rerun = RerunRequest::plain(world.job_key());
    rerun.resend = true;
    rerun.fresh_export = true;
    rerun.resend_id = Some("r1".into());
    let outcome = with_bus(&world, &bus).run(&world.job_key(), far(), Trigger::Console, Some(rerun)).await;
    assert!(matches!(outcome, Ok(JobOutcome::Delivered(_))), "{outcome:?}");
    // The job delivered two hours ago, its re-send an hour and a half ago.
    deliver_earlier(&world, 120);
    let key = format!("receipts/{}/resends/r1.json", world.job_id());
    let mut receipt = world.store.json(&key).expect("the re-send's receipt");
    let then = OffsetDateTime::now_utc() - time::Duration::minutes(90);
    receipt["files"][0]["updatedAt"] = json!(then.format(&time::format_description::well_known::Rfc3339).unwrap());
    world.store.insert(&key, serde_json::to_vec(&receipt).unwrap());

    let before = bus.published().len();
    assert_eq!(check(&world, &bus).await.not_picked_up.len(), 1);
    let late: Vec<_> = bus.published().into_iter().skip(before).collect();
    assert_eq!(late.len(), 1, "{late:#?}");
    let staged = late[0].detail.staged_object.as_ref().expect("a staged copy");
    assert_eq!(staged.key, format!("staging/{}/resends/r1/{}", world.job_id(), world.data_name()));
    assert_eq!(late[0].detail.resend_id.as_deref(), Some("r1"));
}
