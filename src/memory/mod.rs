//! In-memory adapters of every port, for tests and benchmarks: a job can be stopped at any
//! point (a crash: the run's future never resumes, as under SIGKILL) and the world it leaves
//! behind inspected, in milliseconds. Never wired into the Lambda binaries.

mod crash;
mod drop;
mod events;
mod queue;
mod secrets;
mod source;
mod store;

use std::sync::{Mutex, MutexGuard};

use crash::Faults;
pub use crash::{Crash, CrashPoint};
pub use drop::{MemoryDrop, MemoryFolder};
pub use events::MemoryBus;
pub use queue::{MemoryQueue, QueueCall};
pub use secrets::MemorySecrets;
pub use source::MemorySource;
pub use store::MemoryStore;

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A test that panicked while holding the lock has already failed; keep its state readable.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
