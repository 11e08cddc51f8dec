//! maestro-relay: Kinaxis Maestro planned orders → CSV → SFTP to SAP PF2/WP2.
//!
//! Read in the order the data flows: `webhook` accepts a batch and stages its `job`;
//! `worker` runs it: `export` (Kinaxis → CSV, or XML) then `delivery` (SFTP, exactly once). Each
//! imports only what lies below it (`scripts/module_graph.py` prints the layers); `app`
//! wires the functions from `config` for the binaries in `src/bin/` and for the tests;
//! `toolbox` reads their records for the operator's `maestro-relay`.

pub mod app;
pub mod config;
pub mod toolbox;

pub mod webhook;
pub mod worker;

pub mod delivery;
pub mod events;
pub mod export;

pub mod aws;
#[cfg(any(test, feature = "test-support"))]
pub mod memory;

pub mod job;
pub mod outlet;
pub mod ports;
pub mod secrets;

pub mod allocator;
pub mod csv_out;
pub mod error;
pub mod retry;
pub mod routing;
pub mod telemetry;
pub mod xml_out;

pub use error::{Error, ErrorClass, Step};
