//! maestro-relay: Kinaxis Maestro planned orders → CSV → SFTP to SAP PF2/WP2.
//!
//! All logic lives here; `src/bin/webhook.rs` and `src/bin/worker.rs` only wire it to the
//! Lambda runtime and the AWS SDK clients.

pub mod allocator;
pub mod aws;
pub mod config;
pub mod csv_out;
pub mod error;
pub mod export;
pub mod job;
pub mod kinaxis;
pub mod memory;
pub mod ports;
pub mod retry;
pub mod routing;
pub mod secrets;
pub mod sftp;
pub mod telemetry;
pub mod webhook;
pub mod worker;

pub use error::{Error, ErrorClass, Step};
