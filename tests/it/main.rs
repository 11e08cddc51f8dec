//! Integration tests: one binary, against real parts started by `helpers` — moto_server
//! (S3, SQS, Secrets Manager), OpenSSH sshd on loopback, and the Kinaxis simulator.

mod encoding;
mod events;
mod exactly_once;
mod faults;
mod helpers;
mod kinaxis;
mod latest_plan;
mod manifest;
mod no_secrets;
mod pipeline;
mod runbook;
mod schedule;
mod sftp;
mod streaming;
mod template;
mod toolbox;
mod webhook;
mod xml;
