//! The operator's toolbox behind `maestro-relay` (src/bin/maestro-relay.rs): every job's
//! state read from the staging bucket's records (`jobs`), one job's whole story (`show`),
//! the dead-letter queue triaged (`dlq`), a test webhook for the local stack
//! (`send_test`), and the words and widths people read them in (`human`, `print`).

pub mod dlq;
pub mod env_file;
pub mod human;
pub mod jobs;
pub mod print;
pub mod send_test;

pub use dlq::{triage, Triage, TriageAction};
pub use jobs::{find_job, job_rows, story, JobRow, JobState, Story};
