//! An event bus in memory (`EventBus`): what was published, and a bus that refuses entries
//! or fails whole calls when a test asks.

use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;

use super::*;
use crate::error::{Error, Result, Step};
use crate::events::{DeliveryEvent, EventBus};

#[derive(Debug, Default)]
pub struct MemoryBus {
    published: Mutex<Vec<DeliveryEvent>>,
    /// Calls still to fail whole, then entries still to refuse one by one.
    failing_calls: Mutex<u32>,
    refusing_entries: Mutex<u32>,
    /// EventBridge's code for the refusals: one it may take later, or one it never will.
    refusal_code: Mutex<&'static str>,
    calls: Mutex<u32>,
}

impl MemoryBus {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn published(&self) -> Vec<DeliveryEvent> {
        lock(&self.published).clone()
    }

    /// `PutEvents` calls made, taken or not.
    pub fn calls(&self) -> u32 {
        *lock(&self.calls)
    }

    /// The next `times` calls fail as a whole (a transient error; nothing taken).
    pub fn fail_calls(&self, times: u32) {
        *lock(&self.failing_calls) = times;
    }

    /// The next `times` entries are refused one by one (`FailedEntryCount`) as for now
    /// (`InternalFailure`), the rest taken.
    pub fn refuse_entries(&self, times: u32) {
        *lock(&self.refusing_entries) = times;
        *lock(&self.refusal_code) = "InternalFailure";
    }

    /// As `refuse_entries`, for good (`MalformedDetail`).
    pub fn refuse_entries_for_good(&self, times: u32) {
        *lock(&self.refusing_entries) = times;
        *lock(&self.refusal_code) = "MalformedDetail";
    }
}

impl EventBus for Arc<MemoryBus> {
    fn put<'a>(&'a self, events: &'a [&'a DeliveryEvent]) -> BoxFuture<'a, Result<Vec<(usize, String)>>> {
        Box::pin(async move {
            *lock(&self.calls) += 1;
            {
                let mut failing = lock(&self.failing_calls);
                if *failing > 0 {
                    *failing -= 1;
                    return Err(Error::transient(Step::Publish, "PutEvents: injected failure"));
                }
            }
            let mut refused = Vec::new();
            for (index, event) in events.iter().enumerate() {
                let mut refusing = lock(&self.refusing_entries);
                if *refusing > 0 {
                    *refusing -= 1;
                    refused.push((index, format!("{}: injected", lock(&self.refusal_code))));
                } else {
                    lock(&self.published).push((*event).clone());
                }
            }
            Ok(refused)
        })
    }
}
