//! The optional daily job budgets: per `(fileName, target)` (`DAILY_JOB_BUDGET`) and per
//! target over all file names (`DAILY_TARGET_BUDGET`, so a sender varying names cannot stage
//! without limit). One small object per UTC day and counter in the staging bucket, listing
//! the jobs it let through, changed only by conditional writes so concurrent deliveries
//! cannot overspend it.
//!
//! Why a list of job ids and not a number: a delivery of a job already counted (a repeat of
//! a staged job, a retry after the manifest write failed, two copies racing) finds its id
//! and is not counted twice, so the budget is checked before the manifest is written and a
//! repeat still gets its 200 `duplicate`. The list is as long as the budget: a few ids.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::error::{Error, Result, ResultExt, Step};
use crate::ports::{CreateOutcome, Guarded, ObjectStore};
use crate::routing::Target;

/// Where the counter of one day, target and file name lives (expired by a lifecycle rule).
/// The name without `.csv`, as the delivered file is named: `X` and `X.csv` share a budget.
pub fn key(day: time::Date, target: &Target, file_name: &str) -> String {
    format!("budget/{day}/{target}/{}.json", crate::routing::file_name_stem(file_name))
}

/// Where the counter of one day and target over all its file names lives: beside the
/// per-name counters' folder, so no file name can collide with it.
pub fn target_key(day: time::Date, target: &Target) -> String {
    format!("budget/{day}/{target}.json")
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Counter {
    jobs: Vec<String>,
}

/// Whether a job fits in today's budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spent {
    /// Counted now, or counted before (the same job again).
    Within,
    /// The budget is used up until the next UTC midnight, this far away.
    Exhausted { retry_after: Duration },
}

/// Rounds of read-then-conditional-write before giving up: each lost round means another
/// delivery was counted meanwhile, so this bounds a burst of that many at once.
const ATTEMPTS: u32 = 12;

/// Counts `job_id` against the budget of `limit` jobs for its file name and target today.
pub async fn reserve<S: ObjectStore>(
    store: &S,
    limit: u32,
    target: &Target,
    file_name: &str,
    job_id: &str,
    now: OffsetDateTime,
) -> Result<Spent> {
    reserve_at(store, &key(now.date(), target, file_name), limit, job_id, now).await
}

/// Counts `job_id` against the budget of `limit` jobs for its target today, all names together.
pub async fn reserve_target<S: ObjectStore>(
    store: &S,
    limit: u32,
    target: &Target,
    job_id: &str,
    now: OffsetDateTime,
) -> Result<Spent> {
    reserve_at(store, &target_key(now.date(), target), limit, job_id, now).await
}

async fn reserve_at<S: ObjectStore>(
    store: &S,
    key: &str,
    limit: u32,
    job_id: &str,
    now: OffsetDateTime,
) -> Result<Spent> {
    let key = key.to_owned();
    for _ in 0..ATTEMPTS {
        // Create first, read only what exists: the webhook may not list the bucket, and
        // without that right S3 answers a read of a missing key with 403, not 404.
        let first = encode(&Counter { jobs: vec![job_id.to_owned()] })?;
        let created = store.create(&key, first, "application/json").await.map_err(|e| e.at(Step::Webhook))?;
        if created == CreateOutcome::Created {
            return Ok(Spent::Within);
        }
        let written = match store.get_tagged(&key).await.map_err(|e| e.at(Step::Webhook))? {
            // Gone between the two calls (a lifecycle expiry): create it again.
            None => false,
            Some(tagged) => {
                let mut counter: Counter = serde_json::from_slice(&tagged.bytes)
                    .or_transient(Step::Webhook, format!("the budget counter {key} is not the expected JSON"))?;
                if counter.jobs.iter().any(|id| id == job_id) {
                    return Ok(Spent::Within);
                }
                if counter.jobs.len() >= limit as usize {
                    return Ok(Spent::Exhausted { retry_after: until_next_utc_day(now) });
                }
                counter.jobs.push(job_id.to_owned());
                let bytes = encode(&counter)?;
                matches!(
                    store
                        .replace(&key, bytes, "application/json", &tagged.etag)
                        .await
                        .map_err(|e| e.at(Step::Webhook))?,
                    Guarded::Written
                )
            }
        };
        if written {
            return Ok(Spent::Within);
        }
        // Another delivery changed the counter between our read and write: read it again,
        // after a short random pause so a burst does not collide in lockstep.
        tokio::time::sleep(Duration::from_millis(fastrand::u64(5..40))).await;
    }
    Err(Error::transient(Step::Webhook, format!("the budget counter {key} kept changing under {ATTEMPTS} attempts")))
}

fn encode(counter: &Counter) -> Result<Vec<u8>> {
    serde_json::to_vec(counter).or_permanent(Step::Webhook, "encoding the budget counter")
}

/// Seconds to the next UTC midnight, at least one.
pub fn until_next_utc_day(now: OffsetDateTime) -> Duration {
    let now = now.to_offset(time::UtcOffset::UTC);
    let seconds_today = i64::from(now.hour()) * 3600 + i64::from(now.minute()) * 60 + i64::from(now.second());
    Duration::from_secs((86_400 - seconds_today).max(1) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_name_with_and_without_csv_shares_one_budget() {
        let day = time::macros::date!(2026 - 11 - 27);
        let pf2 = Target::parse("PF2").unwrap();
        assert_eq!(key(day, &pf2, "Orders-PF.csv"), key(day, &pf2, "Orders-PF"));
        assert_eq!(key(day, &pf2, "Orders-PF"), "budget/2026-11-27/PF2/Orders-PF.json");
    }
    use crate::memory::MemoryStore;
    use std::sync::Arc;
    use time::macros::datetime;

    fn pf2() -> Target {
        Target::parse("PF2").unwrap()
    }

    #[tokio::test]
    async fn a_budget_counts_distinct_jobs_once_each_and_refuses_past_its_limit_until_midnight() {
        let store = MemoryStore::new();
        let now = datetime!(2026-11-27 22:00:00 UTC);
        for id in ["a", "b", "a"] {
            assert_eq!(reserve(&store, 2, &pf2(), "Orders-PF", id, now).await.unwrap(), Spent::Within, "{id}");
        }
        let refused = reserve(&store, 2, &pf2(), "Orders-PF", "c", now).await.unwrap();
        assert_eq!(refused, Spent::Exhausted { retry_after: Duration::from_secs(7200) });
        // Another file name, another target, the next day: budgets of their own.
        assert_eq!(reserve(&store, 2, &pf2(), "Other-PF", "c", now).await.unwrap(), Spent::Within);
        let tomorrow = datetime!(2026-11-28 00:00:01 UTC);
        assert_eq!(reserve(&store, 2, &pf2(), "Orders-PF", "c", tomorrow).await.unwrap(), Spent::Within);
    }

    #[tokio::test]
    async fn concurrent_reservations_never_overspend() {
        let store = MemoryStore::new();
        let now = datetime!(2026-11-27 06:00:00 UTC);
        let tasks: Vec<_> = (0..30)
            .map(|i| {
                let store = Arc::clone(&store);
                tokio::spawn(async move { reserve(&store, 5, &pf2(), "Orders-PF", &format!("job-{i}"), now).await })
            })
            .collect();
        let mut within = 0;
        for task in tasks {
            if task.await.unwrap().unwrap() == Spent::Within {
                within += 1;
            }
        }
        assert_eq!(within, 5);
        let counter: Counter =
            serde_json::from_slice(&store.object(&key(now.date(), &pf2(), "Orders-PF")).unwrap()).unwrap();
        assert_eq!(counter.jobs.len(), 5);
    }
}
