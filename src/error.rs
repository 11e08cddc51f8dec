//! The one error type: what failed (step), whether retrying can help (class), and the cause.

use std::fmt;
use std::time::Duration;

/// Whether a retry can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ErrorClass {
    /// Network, timeout, 5xx/429/408, SFTP connect or I/O, S3 throttling: retry.
    Transient,
    /// Bad input, rights, a refused key, a conflicting remote file: retrying changes nothing.
    Permanent,
}

/// The part of the pipeline an error arose in; it names the failure for ops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    Config,
    Secrets,
    Webhook,
    Manifest,
    Fetch,
    Convert,
    Stage,
    Deliver,
    Receipt,
    /// Taking or releasing the job's lease.
    Lease,
    /// Telling the jobs queue (later retry, dead-letter queue).
    Queue,
    /// Publishing delivery events (EventBridge).
    Publish,
    /// The SAP pickup watchdog's look at delivered files.
    Pickup,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Step::Config => "config",
            Step::Secrets => "secrets",
            Step::Webhook => "webhook",
            Step::Manifest => "manifest",
            Step::Fetch => "fetch",
            Step::Convert => "convert",
            Step::Stage => "stage",
            Step::Deliver => "deliver",
            Step::Receipt => "receipt",
            Step::Lease => "lease",
            Step::Queue => "queue",
            Step::Publish => "publish",
            Step::Pickup => "pickup",
        };
        f.write_str(name)
    }
}

type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// An error with its class, step, a message naming what failed, and its cause.
#[derive(Debug, thiserror::Error)]
#[error("{step} failed ({class}): {message}")]
pub struct Error {
    pub class: ErrorClass,
    pub step: Step,
    pub message: String,
    /// A server's `Retry-After`, honoured by the retry policy.
    pub retry_after: Option<Duration>,
    #[source]
    source: Option<Cause>,
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorClass::Transient => "transient",
            ErrorClass::Permanent => "permanent",
        })
    }
}

impl Error {
    pub fn new(class: ErrorClass, step: Step, message: impl Into<String>) -> Self {
        Self { class, step, message: message.into(), retry_after: None, source: None }
    }

    pub fn transient(step: Step, message: impl Into<String>) -> Self {
        Self::new(ErrorClass::Transient, step, message)
    }

    pub fn permanent(step: Step, message: impl Into<String>) -> Self {
        Self::new(ErrorClass::Permanent, step, message)
    }

    /// Keeps `cause` as this error's source.
    pub fn caused_by(mut self, cause: impl Into<Cause>) -> Self {
        self.source = Some(cause.into());
        self
    }

    /// Re-labels the step, for errors raised by a shared adapter on behalf of a step.
    pub fn at(mut self, step: Step) -> Self {
        self.step = step;
        self
    }

    pub fn with_retry_after(mut self, after: Option<Duration>) -> Self {
        self.retry_after = after;
        self
    }

    pub fn is_transient(&self) -> bool {
        self.class == ErrorClass::Transient
    }

    /// The message followed by every cause, for logs and failure records.
    pub fn chain(&self) -> String {
        let mut text = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(inner) = cause {
            text.push_str(": ");
            text.push_str(&inner.to_string());
            cause = inner.source();
        }
        text
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A foreign failure as ours, classed and placed, its cause kept:
/// `.or_transient(Step::Fetch, "reading the workbook")` for `.map_err(|e| Error::transient(…).caused_by(e))`.
pub trait ResultExt<T> {
    fn or_transient(self, step: Step, what: impl Into<String>) -> Result<T>;
    fn or_permanent(self, step: Step, what: impl Into<String>) -> Result<T>;
}

impl<T, E: Into<Cause>> ResultExt<T> for std::result::Result<T, E> {
    fn or_transient(self, step: Step, what: impl Into<String>) -> Result<T> {
        self.map_err(|e| Error::transient(step, what).caused_by(e))
    }

    fn or_permanent(self, step: Step, what: impl Into<String>) -> Result<T> {
        self.map_err(|e| Error::permanent(step, what).caused_by(e))
    }
}

/// What the Lambda console shows for a failed invocation: `Permanent.Deliver`, say, and
/// the message with its causes.
impl From<Error> for lambda_runtime::Diagnostic {
    fn from(err: Error) -> Self {
        let class = match err.class {
            ErrorClass::Transient => "Transient",
            ErrorClass::Permanent => "Permanent",
        };
        let step = crate::telemetry::capitalise(&err.step.to_string());
        Self { error_type: format!("{class}.{step}"), error_message: err.chain() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_names_the_step_the_class_and_every_cause() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let err = Error::transient(Step::Deliver, "connecting to sftp.example:22").caused_by(io);
        assert_eq!(err.chain(), "deliver failed (transient): connecting to sftp.example:22: refused");
        assert!(err.is_transient());
    }

    #[test]
    fn the_lambda_console_sees_the_class_and_step_as_the_error_type() {
        let diagnostic: lambda_runtime::Diagnostic = Error::permanent(Step::Deliver, "host key mismatch").into();
        assert_eq!(diagnostic.error_type, "Permanent.Deliver");
        assert_eq!(diagnostic.error_message, "deliver failed (permanent): host key mismatch");
    }
}
