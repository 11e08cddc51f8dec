//! Where a crash strikes and the faults a test arms: shared by the in-memory adapters.

use std::sync::atomic::Ordering;
use std::sync::Mutex;

use tokio::sync::Notify;

use crate::error::{Error, Result, Step};

use super::lock;

/// Where a crash strikes: the first operation named `operation` on a key or file name
/// containing `name_contains`, before it takes effect or just after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrashPoint {
    pub operation: &'static str,
    pub name_contains: String,
    pub after: bool,
    /// Matching operations to let through first.
    pub skip: u32,
}

/// Arms one crash and tells when it struck. A struck operation never returns, so the run
/// stops there and nothing after it happens, as when Lambda kills the process.
#[derive(Debug, Default)]
pub struct Crash {
    armed: Mutex<Option<CrashPoint>>,
    struck: Notify,
    has_struck: std::sync::atomic::AtomicBool,
}

impl Crash {
    pub fn arm(&self, operation: &'static str, name_contains: impl Into<String>, after: bool) {
        self.arm_nth(operation, name_contains, after, 0);
    }

    /// As `arm`, striking the match after `skip` matching operations went through.
    pub fn arm_nth(&self, operation: &'static str, name_contains: impl Into<String>, after: bool, skip: u32) {
        *lock(&self.armed) = Some(CrashPoint { operation, name_contains: name_contains.into(), after, skip });
        self.has_struck.store(false, Ordering::SeqCst);
    }

    /// Resolves once the armed crash has struck.
    pub async fn struck(&self) {
        loop {
            let notified = self.struck.notified();
            if self.has_struck.load(Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }

    /// Disarms and strikes when `operation` on `name` matches, at the `after` moment.
    pub(super) fn check(&self, operation: &str, name: &str, after: bool) -> bool {
        let mut armed = lock(&self.armed);
        let Some(point) = armed.as_mut() else { return false };
        if point.operation != operation || point.after != after || !name.contains(&point.name_contains) {
            return false;
        }
        if point.skip > 0 {
            point.skip -= 1;
            return false;
        }
        *armed = None;
        self.has_struck.store(true, Ordering::SeqCst);
        self.struck.notify_waiters();
        true
    }

    pub(super) async fn point(&self, operation: &str, name: &str, after: bool) {
        if self.check(operation, name, after) {
            std::future::pending::<()>().await;
        }
    }
}

/// A failure to inject: the next `times` calls of `operation` on a matching name fail.
#[derive(Debug, Clone)]
pub(super) struct Fault {
    operation: &'static str,
    name_contains: String,
    /// Matching calls to let through first.
    skip: u32,
    times: u32,
    transient: bool,
}

#[derive(Debug, Default)]
pub(super) struct Faults(Mutex<Vec<Fault>>);

impl Faults {
    pub(super) fn add(&self, operation: &'static str, name_contains: &str, times: u32, transient: bool) {
        self.add_nth(operation, name_contains, 0, times, transient);
    }

    pub(super) fn add_nth(&self, operation: &'static str, name_contains: &str, skip: u32, times: u32, transient: bool) {
        lock(&self.0).push(Fault { operation, name_contains: name_contains.to_owned(), skip, times, transient });
    }

    pub(super) fn take(&self, operation: &str, name: &str, step: Step) -> Result<()> {
        let mut faults = lock(&self.0);
        let Some(fault) =
            faults.iter_mut().find(|f| f.operation == operation && f.times > 0 && name.contains(&f.name_contains))
        else {
            return Ok(());
        };
        if fault.skip > 0 {
            fault.skip -= 1;
            return Ok(());
        }
        fault.times -= 1;
        let message = format!("{operation} {name}: injected failure");
        Err(if fault.transient { Error::transient(step, message) } else { Error::permanent(step, message) })
    }
}
