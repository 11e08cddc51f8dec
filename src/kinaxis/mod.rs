//! The Kinaxis Maestro REST workbook API: OAuth client credentials, workbook, worksheet pages.

pub mod client;
pub mod model;

pub use client::{KinaxisClient, KinaxisOptions, PagingStyle};
