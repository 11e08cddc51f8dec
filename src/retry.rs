//! The one retry policy every step uses: transient errors only, exponential backoff with
//! jitter, `Retry-After` honoured, and every attempt, not only every pause, bounded by the
//! caller's deadline.
//!
//! Hand-written rather than `backon`: the deadline comes from the Lambda context at run
//! time and a server's `Retry-After` travels inside our error type; both are a few lines here.

use std::future::Future;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use crate::error::{Error, Result, Step};

#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first attempt (3 → up to 4 attempts).
    pub retries: u32,
    pub initial_delay: Duration,
    pub factor: f64,
    pub max_delay: Duration,
    /// Fraction of each delay drawn at random either way (0.2 → ±20 %).
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            retries: 3,
            initial_delay: Duration::from_secs(30),
            factor: 2.0,
            max_delay: Duration::from_secs(300),
            jitter: 0.2,
        }
    }
}

impl RetryPolicy {
    /// The pause before retry number `retry` (0-based), jitter applied.
    pub fn delay(&self, retry: u32) -> Duration {
        let base = self.initial_delay.as_secs_f64() * self.factor.powi(retry as i32);
        let spread = self.jitter.clamp(0.0, 1.0);
        let scale = 1.0 - spread + 2.0 * spread * fastrand::f64();
        // The cap again on the Duration: f64 rounding of a large cap can land a hair above it.
        Duration::try_from_secs_f64((base * scale).min(self.max_delay.as_secs_f64()).max(0.0))
            .unwrap_or(self.max_delay)
            .min(self.max_delay)
    }

    /// The pause before retry number `retry`: the backoff, or a server's `Retry-After` when
    /// longer, never beyond the longest pause configured (a header of years, or of
    /// u64::MAX seconds, neither overflows nor stalls the job).
    pub fn pause(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        retry_after.unwrap_or_default().min(self.max_delay).max(self.delay(retry))
    }

    /// Runs `attempt` until it succeeds, fails permanently, runs out of retries, or the
    /// deadline comes: no attempt starts after it, one in flight is cut at it (a transient
    /// error of `step`), and no pause that would end after it begins. Returns the value and
    /// the number of attempts made.
    pub async fn run<T, F, Fut>(&self, deadline: Instant, step: Step, what: &str, mut attempt: F) -> Result<(T, u32)>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut made = 0;
        loop {
            if Instant::now() >= deadline {
                return Err(deadline_reached(step, what));
            }
            made += 1;
            let outcome = tokio::time::timeout_at(deadline, attempt(made)).await;
            let err: Error = match outcome {
                Ok(Ok(value)) => return Ok((value, made)),
                Ok(Err(err)) => err,
                Err(_) => return Err(deadline_reached(step, what)),
            };
            if !err.is_transient() || made > self.retries {
                return Err(err);
            }
            let pause = self.pause(made - 1, err.retry_after);
            if Instant::now().checked_add(pause).is_none_or(|resumes| resumes >= deadline) {
                tracing::warn!(what, attempt = made, error = %err.chain(), "no time left for another retry");
                return Err(err);
            }
            tracing::warn!(what, attempt = made, pause_ms = pause.as_millis() as u64, error = %err.chain(), "transient failure, retrying");
            tokio::time::sleep(pause).await;
        }
    }
}

/// What a step cut by the deadline reports: transient, since a later run with a whole
/// invocation ahead of it can finish.
pub fn deadline_reached(step: Step, what: &str) -> Error {
    Error::transient(
        step,
        format!(
            "{what}: the invocation's deadline (its timeout less the margin kept to record the outcome) was reached"
        ),
    )
}

/// `Retry-After` as delay-seconds or as an HTTP date (RFC 9110), relative to `now`; a date
/// in the past is no wait. Extreme values are the retry policy's to clamp; nothing here
/// can overflow.
pub fn retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn fast() -> RetryPolicy {
        RetryPolicy {
            retries: 3,
            initial_delay: Duration::from_millis(1),
            factor: 2.0,
            max_delay: Duration::from_millis(10),
            jitter: 0.0,
        }
    }

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    #[test]
    fn delays_grow_by_the_factor_from_the_initial_delay_and_stop_at_the_cap() {
        let policy = RetryPolicy { jitter: 0.0, ..RetryPolicy::default() };
        assert_eq!(policy.delay(0), Duration::from_secs(30));
        assert_eq!(policy.delay(1), Duration::from_secs(60));
        assert_eq!(policy.delay(2), Duration::from_secs(120));
        assert_eq!(policy.delay(5), Duration::from_secs(300));
    }

    #[test]
    fn jitter_keeps_each_delay_within_its_band() {
        let policy = RetryPolicy::default();
        for _ in 0..200 {
            let d = policy.delay(0).as_secs_f64();
            assert!((24.0..=36.0).contains(&d), "{d}");
        }
    }

    #[tokio::test]
    async fn a_transient_failure_that_clears_is_retried_until_it_succeeds() {
        let calls = Cell::new(0);
        let (value, attempts) = fast()
            .run(far(), Step::Fetch, "t", |_| {
                calls.set(calls.get() + 1);
                let n = calls.get();
                async move {
                    if n < 3 {
                        Err(Error::transient(Step::Fetch, "503"))
                    } else {
                        Ok(n)
                    }
                }
            })
            .await
            .unwrap();
        assert_eq!((value, attempts), (3, 3));
    }

    #[tokio::test]
    async fn a_transient_failure_that_persists_gives_up_after_the_configured_retries() {
        let calls = Cell::new(0);
        let err = fast()
            .run(far(), Step::Fetch, "t", |_| {
                calls.set(calls.get() + 1);
                async { Err::<(), _>(Error::transient(Step::Fetch, "503")) }
            })
            .await
            .unwrap_err();
        assert!(err.is_transient());
        assert_eq!(calls.get(), 4);
    }

    #[tokio::test]
    async fn a_permanent_failure_is_not_retried() {
        let calls = Cell::new(0);
        let err = fast()
            .run(far(), Step::Fetch, "t", |_| {
                calls.set(calls.get() + 1);
                async { Err::<(), _>(Error::permanent(Step::Fetch, "403")) }
            })
            .await
            .unwrap_err();
        assert!(!err.is_transient());
        assert_eq!(calls.get(), 1);
    }

    #[tokio::test]
    async fn no_retry_starts_when_its_pause_would_end_after_the_deadline() {
        let calls = Cell::new(0);
        let policy =
            RetryPolicy { initial_delay: Duration::from_secs(30), max_delay: Duration::from_secs(300), ..fast() };
        let _ = policy
            .run(Instant::now() + Duration::from_secs(1), Step::Fetch, "t", |_| {
                calls.set(calls.get() + 1);
                async { Err::<(), _>(Error::transient(Step::Fetch, "503")) }
            })
            .await;
        assert_eq!(calls.get(), 1);
    }

    #[tokio::test]
    async fn a_retry_after_longer_than_the_backoff_is_honoured() {
        let started = Instant::now();
        let calls = Cell::new(0);
        let _ = RetryPolicy { max_delay: Duration::from_millis(200), ..fast() }
            .run(far(), Step::Fetch, "t", |_| {
                calls.set(calls.get() + 1);
                let n = calls.get();
                async move {
                    if n == 1 {
                        Err(Error::transient(Step::Fetch, "429").with_retry_after(Some(Duration::from_millis(50))))
                    } else {
                        Ok(())
                    }
                }
            })
            .await;
        assert!(started.elapsed() >= Duration::from_millis(50));
    }

    #[tokio::test]
    async fn an_attempt_still_running_at_the_deadline_is_cut_and_named_transient_in_its_step() {
        let started = Instant::now();
        let err = fast()
            .run(Instant::now() + Duration::from_millis(50), Step::Deliver, "sftp upload", |_| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                Ok::<(), Error>(())
            })
            .await
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!((err.class, err.step), (crate::error::ErrorClass::Transient, Step::Deliver));
        assert!(err.message.contains("sftp upload") && err.message.contains("deadline"), "{}", err.message);
    }

    #[tokio::test]
    async fn no_first_attempt_starts_after_the_deadline() {
        let calls = Cell::new(0);
        let err = fast()
            .run(Instant::now() - Duration::from_millis(1), Step::Receipt, "write receipt", |_| {
                calls.set(calls.get() + 1);
                async { Ok::<(), Error>(()) }
            })
            .await
            .unwrap_err();
        assert_eq!(calls.get(), 0);
        assert_eq!(err.step, Step::Receipt);
    }

    proptest::proptest! {
        #[test]
        fn no_retry_after_and_no_configured_delay_can_overflow_or_exceed_the_longest_pause(
            header in proptest::prelude::any::<u64>(),
            text in "\\PC{0,40}",
            max_delay_ms in proptest::prelude::any::<u64>(),
            initial_ms in proptest::prelude::any::<u64>(),
            retry in 0u32..1000,
        ) {
            let policy = RetryPolicy {
                initial_delay: Duration::from_millis(initial_ms),
                max_delay: Duration::from_millis(max_delay_ms),
                factor: 2.0,
                ..RetryPolicy::default()
            };
            let now = std::time::SystemTime::now();
            for value in [header.to_string(), text.clone(), "Sun, 06 Nov 1994 08:49:37 GMT".to_owned(), "Fri, 31 Dec 9999 23:59:59 GMT".to_owned()] {
                let after = retry_after(&value, now);
                let pause = policy.pause(retry, after);
                proptest::prop_assert!(pause <= policy.max_delay);
            }
        }
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = httpdate::parse_http_date("Fri, 27 Nov 2026 12:00:00 GMT").unwrap();
        assert_eq!(retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(retry_after("Fri, 27 Nov 2026 12:00:30 GMT", now), Some(Duration::from_secs(30)));
        assert_eq!(retry_after("Fri, 27 Nov 2026 11:00:00 GMT", now), Some(Duration::ZERO));
        assert_eq!(retry_after("18446744073709551615", now), Some(Duration::from_secs(u64::MAX)));
        assert_eq!(retry_after("soon", now), None);
        let policy = RetryPolicy { jitter: 0.0, ..RetryPolicy::default() };
        assert_eq!(policy.pause(0, retry_after("18446744073709551615", now)), Duration::from_secs(300));
    }
}
