//! The Kinaxis Maestro REST workbook API: OAuth client credentials, workbook, worksheet pages.

pub mod client;
pub mod model;
pub mod page;

pub use client::{KinaxisClient, KinaxisOptions, PagingStyle};
