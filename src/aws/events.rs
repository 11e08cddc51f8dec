//! Delivery events on EventBridge (`PutEvents`): one call per at most ten events, each
//! entry the bus refused named with its error code.

use aws_sdk_eventbridge::types::PutEventsRequestEntry;
use aws_sdk_eventbridge::Client;
use futures_util::future::BoxFuture;

use super::classify;
use crate::error::{Error, Result, Step};
use crate::events::{DeliveryEvent, EventBus, SOURCE};

#[derive(Clone)]
pub struct EventBridgeBus {
    client: Client,
    bus_name: String,
}

impl EventBridgeBus {
    pub fn from_sdk_config(config: &aws_config::SdkConfig, bus_name: impl Into<String>) -> Self {
        Self { client: Client::new(config), bus_name: bus_name.into() }
    }

    fn entry(&self, event: &DeliveryEvent) -> Result<PutEventsRequestEntry> {
        let detail = serde_json::to_string(&event.detail)
            .map_err(|e| Error::permanent(Step::Publish, "serialising an event's detail").caused_by(e))?;
        Ok(PutEventsRequestEntry::builder()
            .event_bus_name(&self.bus_name)
            .source(SOURCE)
            .detail_type(event.detail_type.as_str())
            .detail(detail)
            .build())
    }
}

impl EventBus for EventBridgeBus {
    fn put<'a>(&'a self, events: &'a [&'a DeliveryEvent]) -> BoxFuture<'a, Result<Vec<(usize, String)>>> {
        Box::pin(async move {
            let entries = events.iter().map(|e| self.entry(e)).collect::<Result<Vec<_>>>()?;
            let output = self
                .client
                .put_events()
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| classify(e, Step::Publish, &format!("putting events on the bus {}", self.bus_name)))?;
            // Entries come back in request order; an entry with an error code was not taken.
            let refused = output
                .entries()
                .iter()
                .enumerate()
                .filter_map(|(index, entry)| {
                    entry.error_code().map(|code| {
                        (index, format!("{code}: {} (bus {})", entry.error_message().unwrap_or(""), self.bus_name))
                    })
                })
                .collect::<Vec<_>>();
            if output.failed_entry_count() > 0 && refused.is_empty() {
                // The count without the entries: none can be told apart, so none is trusted.
                let why = format!("FailedEntryCount without entries (bus {})", self.bus_name);
                return Ok((0..events.len()).map(|i| (i, why.clone())).collect());
            }
            Ok(refused)
        })
    }
}
