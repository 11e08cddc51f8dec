//! The jobs queue on SQS: a later retry by message visibility, and the dead-letter queue
//! written at once for a job that will not be tried again, and worked by the operator's
//! toolbox (`DeadLetters`).

use std::time::Duration;

use aws_sdk_sqs::types::MessageAttributeValue;
use aws_sdk_sqs::Client;

use super::classify;
use crate::error::{Result, ResultExt, Step};
use crate::ports::{DeadLetter, DeadLetters, JobQueue};

/// SQS caps a message's delay at 15 minutes.
const MAX_DELAY: Duration = Duration::from_secs(15 * 60);
/// SQS caps a message's visibility at 12 hours.
const MAX_VISIBILITY: Duration = Duration::from_secs(12 * 3600);
/// SQS caps a message attribute value, and ops need only the head of the reason.
const MAX_REASON_CHARS: usize = 1000;

#[derive(Clone)]
pub struct SqsQueue {
    client: Client,
    jobs_queue_url: String,
    dead_letter_queue_url: String,
}

impl SqsQueue {
    pub fn from_sdk_config(
        config: &aws_config::SdkConfig,
        jobs_queue_url: impl Into<String>,
        dead_letter_queue_url: impl Into<String>,
    ) -> Self {
        Self {
            client: Client::new(config),
            jobs_queue_url: jobs_queue_url.into(),
            dead_letter_queue_url: dead_letter_queue_url.into(),
        }
    }
}

impl JobQueue for SqsQueue {
    async fn retry_later(&self, receipt_handle: &str, delay: Duration) -> Result<()> {
        let seconds = delay.min(MAX_VISIBILITY).as_secs() as i32;
        self.client
            .change_message_visibility()
            .queue_url(&self.jobs_queue_url)
            .receipt_handle(receipt_handle)
            .visibility_timeout(seconds)
            .send()
            .await
            .map_err(|e| classify(e, Step::Queue, "delaying the message's next receive"))?;
        Ok(())
    }

    async fn dead_letter(&self, body: &str, reason: &str) -> Result<()> {
        let reason: String = reason.chars().take(MAX_REASON_CHARS).collect();
        let attribute = MessageAttributeValue::builder()
            .data_type("String")
            .string_value(reason)
            .build()
            .or_permanent(Step::Queue, "building the dead-letter reason")?;
        self.client
            .send_message()
            .queue_url(&self.dead_letter_queue_url)
            .message_body(body)
            .message_attributes("FailureReason", attribute)
            .send()
            .await
            .map_err(|e| classify(e, Step::Queue, "sending the message to the dead-letter queue"))?;
        Ok(())
    }

    async fn send_later(&self, body: &str, delay: Duration) -> Result<()> {
        let seconds = delay.min(MAX_DELAY).as_secs() as i32;
        self.client
            .send_message()
            .queue_url(&self.jobs_queue_url)
            .message_body(body)
            .delay_seconds(seconds)
            .send()
            .await
            .map_err(|e| classify(e, Step::Queue, "queueing a later check of the job"))?;
        Ok(())
    }
}

impl DeadLetters for SqsQueue {
    async fn receive(&self, hold: Duration) -> Result<Vec<DeadLetter>> {
        let received = self
            .client
            .receive_message()
            .queue_url(&self.dead_letter_queue_url)
            .max_number_of_messages(10)
            // Long polling asks every SQS host, not a sample: an empty answer means empty.
            .wait_time_seconds(1)
            .visibility_timeout(hold.min(MAX_VISIBILITY).as_secs() as i32)
            .message_attribute_names("All")
            .send()
            .await
            .map_err(|e| classify(e, Step::Queue, "reading the dead-letter queue"))?;
        let letters = received
            .messages()
            .iter()
            .filter_map(|m| {
                Some(DeadLetter {
                    message_id: m.message_id()?.to_owned(),
                    receipt_handle: m.receipt_handle()?.to_owned(),
                    body: m.body().unwrap_or_default().to_owned(),
                    reason: m
                        .message_attributes()
                        .and_then(|a| a.get("FailureReason"))
                        .and_then(|v| v.string_value())
                        .map(str::to_owned),
                })
            })
            .collect();
        Ok(letters)
    }

    async fn delete(&self, receipt_handle: &str) -> Result<()> {
        self.client
            .delete_message()
            .queue_url(&self.dead_letter_queue_url)
            .receipt_handle(receipt_handle)
            .send()
            .await
            .map_err(|e| classify(e, Step::Queue, "deleting a dead-letter message"))?;
        Ok(())
    }

    async fn release(&self, receipt_handle: &str) -> Result<()> {
        self.client
            .change_message_visibility()
            .queue_url(&self.dead_letter_queue_url)
            .receipt_handle(receipt_handle)
            .visibility_timeout(0)
            .send()
            .await
            .map_err(|e| classify(e, Step::Queue, "putting a dead-letter message back"))?;
        Ok(())
    }

    async fn send_back(&self, body: &str) -> Result<()> {
        self.client
            .send_message()
            .queue_url(&self.jobs_queue_url)
            .message_body(body)
            .send()
            .await
            .map_err(|e| classify(e, Step::Queue, "sending the job back to the jobs queue"))?;
        Ok(())
    }
}
