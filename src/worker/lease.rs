//! One runner per job: a lease object `locks/{jobId}` taken with a conditional create before
//! any work, held until the run's deadline (plus a grace), taken over with `If-Match` only
//! once it has expired (an unreadable one only after the longest lease any run can hold), and
//! removed by its holder with `If-Match` when the run ends.

use time::OffsetDateTime;

use crate::error::{Error, Result, ResultExt, Step};
use crate::job::{keys, LeaseRecord};
use crate::ports::{CreateOutcome, Guarded, ObjectStore};

/// What trying to take the lease gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lease {
    Held,
    /// Another run holds it until then.
    Busy {
        owner: String,
        until: OffsetDateTime,
    },
}

/// The longest a lease can run: the longest Lambda timeout, plus the grace past it.
pub fn longest(grace: std::time::Duration) -> time::Duration {
    time::Duration::minutes(15) + time::Duration::try_from(grace).unwrap_or(time::Duration::HOUR)
}

/// Takes the job's lease for `record`'s owner; `longest` bounds a lease that cannot be read
/// (counted from when it was written), which is taken over only after it.
pub async fn acquire(
    store: &impl ObjectStore,
    job_id: &str,
    record: &LeaseRecord,
    longest: time::Duration,
) -> Result<Lease> {
    let key = keys::lease(job_id);
    let bytes = serde_json::to_vec(record).or_permanent(Step::Lease, "serialising the lease")?;
    // Twice: a lease released between our create and our read is simply free again.
    for _ in 0..2 {
        let created = store.create(&key, bytes.clone(), "application/json").await.map_err(|e| e.at(Step::Lease))?;
        if created == CreateOutcome::Created {
            return Ok(Lease::Held);
        }
        let Some(current) = store.get_tagged(&key).await.map_err(|e| e.at(Step::Lease))? else { continue };
        match serde_json::from_slice::<LeaseRecord>(&current.bytes) {
            // Our own create landed although it reported an error, and a retry came back.
            Ok(held) if held.owner == record.owner => return Ok(Lease::Held),
            Ok(held) if held.expires_at > record.acquired_at => {
                return Ok(Lease::Busy { owner: held.owner, until: held.expires_at });
            }
            Ok(held) => tracing::warn!(owner = %held.owner, expired = %held.expires_at, "taking over an expired lease"),
            Err(err) => {
                // Whoever wrote it may still be at work: its lease cannot outlast `longest`.
                let until = current.modified.map(|written| written + longest);
                match until {
                    Some(until) if until <= record.acquired_at => {
                        tracing::warn!(error = %err, written = ?current.modified, "taking over an unreadable lease past the longest any run holds one");
                    }
                    _ => {
                        let until = until.unwrap_or(record.acquired_at + longest);
                        tracing::warn!(error = %err, %until, "the lease cannot be read; left alone until no run can still hold it");
                        return Ok(Lease::Busy { owner: "an unreadable lease".to_owned(), until });
                    }
                }
            }
        }
        let replaced = store.replace(&key, bytes, "application/json", &current.etag).await;
        if let Ok(Guarded::Written) = replaced {
            return Ok(Lease::Held);
        }
        // Refused or no answer: our replace may have landed and its answer been lost (the
        // SDK's retry then meets our own ETag and gets 412). The lease read back tells.
        let read_back = store.get(&key).await.map_err(|e| e.at(Step::Lease));
        return match (replaced, read_back) {
            (_, Ok(Some(bytes))) => {
                let held: LeaseRecord = serde_json::from_slice(&bytes)
                    .or_transient(Step::Lease, "the lease changed hands and cannot be read")?;
                if held.owner == record.owner {
                    Ok(Lease::Held)
                } else {
                    Ok(Lease::Busy { owner: held.owner, until: held.expires_at })
                }
            }
            (Err(err), _) => Err(err.at(Step::Lease)),
            (Ok(_), Ok(None)) => Err(Error::transient(Step::Lease, "the lease changed hands twice while being taken")),
            (Ok(_), Err(err)) => Err(err),
        };
    }
    Err(Error::transient(Step::Lease, "the lease kept appearing and disappearing while being taken"))
}

/// Removes the lease if this run still holds it: `If-Match` on the lease this run read, so a
/// lease taken over meanwhile stays.
pub async fn release(store: &impl ObjectStore, job_id: &str, owner: &str) {
    let key = keys::lease(job_id);
    let current = match store.get_tagged(&key).await {
        Ok(current) => current,
        Err(err) => {
            tracing::warn!(error = %err.chain(), "could not read the lease to release it; it expires by itself");
            return;
        }
    };
    let Some(current) = current else { return };
    if !serde_json::from_slice::<LeaseRecord>(&current.bytes).is_ok_and(|l| l.owner == owner) {
        return;
    }
    match store.delete_if_match(&key, &current.etag).await {
        Ok(Guarded::Written) => {}
        Ok(Guarded::Refused) => tracing::info!("the lease changed hands before its release; left to its new holder"),
        Err(err) => tracing::warn!(error = %err.chain(), "could not release the lease; it expires by itself"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemoryStore;
    use std::sync::Arc;
    use time::Duration;

    async fn acquire_now(store: &Arc<MemoryStore>, job_id: &str, record: &LeaseRecord) -> Result<Lease> {
        acquire(store, job_id, record, longest(std::time::Duration::from_secs(60))).await
    }

    fn lease(owner: &str, now: OffsetDateTime, seconds: i64) -> LeaseRecord {
        LeaseRecord { owner: owner.into(), acquired_at: now, expires_at: now + Duration::seconds(seconds) }
    }

    #[tokio::test]
    async fn a_held_lease_keeps_a_second_runner_out_until_it_expires_or_is_released() {
        let store = MemoryStore::new();
        let now = OffsetDateTime::now_utc();
        assert_eq!(acquire_now(&store, "j", &lease("a", now, 900)).await.unwrap(), Lease::Held);
        let busy = acquire_now(&store, "j", &lease("b", now, 900)).await.unwrap();
        assert!(matches!(busy, Lease::Busy { ref owner, .. } if owner == "a"), "{busy:?}");

        // b's release does not remove a's lease; a's does.
        release(&store, "j", "b").await;
        assert!(matches!(acquire_now(&store, "j", &lease("b", now, 900)).await.unwrap(), Lease::Busy { .. }));
        release(&store, "j", "a").await;
        assert_eq!(acquire_now(&store, "j", &lease("b", now, 900)).await.unwrap(), Lease::Held);
    }

    #[tokio::test]
    async fn an_expired_lease_is_taken_over_by_exactly_one_of_two_runners() {
        let store = MemoryStore::new();
        let then = OffsetDateTime::now_utc() - Duration::hours(2);
        assert_eq!(acquire_now(&store, "j", &lease("dead", then, 900)).await.unwrap(), Lease::Held);
        let now = OffsetDateTime::now_utc();
        let (b_lease, c_lease) = (lease("b", now, 900), lease("c", now, 900));
        let (b, c) = tokio::join!(acquire_now(&store, "j", &b_lease), acquire_now(&store, "j", &c_lease));
        let held = [b.unwrap(), c.unwrap()].iter().filter(|l| **l == Lease::Held).count();
        assert_eq!(held, 1);
    }

    #[tokio::test]
    async fn a_takeover_whose_answer_is_lost_is_still_held_by_the_run_that_wrote_it() {
        let store = MemoryStore::new();
        let then = OffsetDateTime::now_utc() - Duration::hours(2);
        assert_eq!(acquire_now(&store, "j", &lease("dead", then, 900)).await.unwrap(), Lease::Held);
        let now = OffsetDateTime::now_utc();
        // The replace lands and reports an error.
        store.fail_after_landing("replace", "locks/", 1);
        assert_eq!(acquire_now(&store, "j", &lease("b", now, 900)).await.unwrap(), Lease::Held);
        // The replace lands and reports a refusal (the SDK's retry met b's own ETag).
        let later = now + Duration::hours(2);
        store.refuse_after_landing("replace", "locks/", 1);
        assert_eq!(acquire_now(&store, "j", &lease("c", later, 900)).await.unwrap(), Lease::Held);
        let held: LeaseRecord = serde_json::from_slice(&store.object("locks/j").unwrap()).unwrap();
        assert_eq!(held.owner, "c");
    }

    #[tokio::test]
    async fn an_unreadable_lease_is_taken_over_only_after_the_longest_lease_any_run_can_hold() {
        let store = MemoryStore::new();
        store.insert("locks/j", b"not a lease".to_vec());
        let now = OffsetDateTime::now_utc();
        let busy = acquire_now(&store, "j", &lease("b", now, 900)).await.unwrap();
        assert!(matches!(busy, Lease::Busy { until, .. } if until > now + Duration::minutes(15)), "{busy:?}");
        assert_eq!(store.object("locks/j").unwrap(), b"not a lease", "left alone");
        store.age("locks/j", 16 * 60 + 61);
        assert_eq!(acquire_now(&store, "j", &lease("b", now, 900)).await.unwrap(), Lease::Held);
    }

    #[tokio::test]
    async fn a_release_after_the_lease_changed_hands_leaves_the_new_holders_lease() {
        let store = MemoryStore::new();
        let then = OffsetDateTime::now_utc() - Duration::hours(2);
        assert_eq!(acquire_now(&store, "j", &lease("a", then, 900)).await.unwrap(), Lease::Held);
        // a reads its own lease to release it; b takes the expired lease over before a's delete.
        store.crash.arm("delete_if_match", "locks/", false);
        let now = OffsetDateTime::now_utc();
        let release_a = release(&store, "j", "a");
        tokio::pin!(release_a);
        tokio::select! {
            () = &mut release_a => panic!("the release finished before the armed point"),
            () = store.crash.struck() => {}
        }
        assert_eq!(acquire_now(&store, "j", &lease("b", now, 900)).await.unwrap(), Lease::Held);
        // a's delete, conditional on the lease it read, now finds b's.
        assert_eq!(store.delete_if_match("locks/j", "1").await.unwrap(), Guarded::Refused);
        let held: LeaseRecord = serde_json::from_slice(&store.object("locks/j").unwrap()).unwrap();
        assert_eq!(held.owner, "b");
    }
}
