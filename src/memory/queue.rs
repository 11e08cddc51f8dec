//! The jobs queue in memory (`JobQueue`): what the worker told it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;
use crate::error::{Result, Step};
use crate::ports::JobQueue;

/// What the worker told the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueCall {
    RetryLater { receipt_handle: String, delay: Duration },
    DeadLetter { body: String, reason: String },
    SendLater { body: String, delay: Duration },
}

#[derive(Debug, Default)]
pub struct MemoryQueue {
    calls: Mutex<Vec<QueueCall>>,
    faults: Faults,
}

impl MemoryQueue {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn calls(&self) -> Vec<QueueCall> {
        lock(&self.calls).clone()
    }

    /// The next `times` calls of `retry_later`, `dead_letter` or `send_later` fail (transient).
    pub fn fail(&self, operation: &'static str, times: u32) {
        self.faults.add(operation, "", times, true);
    }
}

impl JobQueue for Arc<MemoryQueue> {
    async fn retry_later(&self, receipt_handle: &str, delay: Duration) -> Result<()> {
        self.faults.take("retry_later", "", Step::Queue)?;
        lock(&self.calls).push(QueueCall::RetryLater { receipt_handle: receipt_handle.to_owned(), delay });
        Ok(())
    }

    async fn dead_letter(&self, body: &str, reason: &str) -> Result<()> {
        self.faults.take("dead_letter", "", Step::Queue)?;
        lock(&self.calls).push(QueueCall::DeadLetter { body: body.to_owned(), reason: reason.to_owned() });
        Ok(())
    }

    async fn send_later(&self, body: &str, delay: Duration) -> Result<()> {
        self.faults.take("send_later", "", Step::Queue)?;
        lock(&self.calls).push(QueueCall::SendLater { body: body.to_owned(), delay });
        Ok(())
    }
}
