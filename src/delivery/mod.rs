//! Step two: exactly-once delivery of one file into an SAP folder that SAP empties on its
//! own, over the SFTP adapter in `sftp`.
//!
//! The remote folder cannot tell whether a file was delivered (SAP's pickup moves it within
//! minutes), so what was sent is recorded in S3: the intent (temporary name, final name,
//! size, SHA-256) after the temporary is complete and before the rename, the delivered mark
//! after it. A later attempt decides from the record and the folder:
//! - delivered mark → nothing to do;
//! - intent, final file there and identical → delivered;
//! - intent, temporary there and complete → claim the destination again (a newer batch
//!   refuses it), then finish the rename;
//! - intent, temporary and final both gone → it was renamed and SAP took it, when no other
//!   job claimed the destination since (`destination`): delivered, not sent again; otherwise
//!   unknown, a permanent failure (an abandoned temporary is recorded as such before it is
//!   removed, so its absence is never read as a rename);
//! - no record (or abandoned) → the existing-file policy, then upload, intent, rename, mark;
//! - streaming (the temporary was written while the export ran) → this run's own, complete
//!   temporary goes on as if just uploaded; another run's is removed and the file sent again.
//!
//! Every rename comes after the job claimed its SAP destination (`destination::Destination`),
//! and the file-exists policy is decided under that claim. A file already under the name is
//! replaced in one step where the server offers `posix-rename@openssh.com` (SAP never sees the
//! name missing or short).
//!
//! Temporaries carry the job's id in their name; an attempt removes this job's temporaries of
//! the file it sends (any age: the job's lease keeps other runs of it out), and never another
//! job's.
//!
//! The trigger file, when the profile asks for one, comes only after the delivered mark, by
//! the same protocol: its temporary recorded before its rename, written marked after. A
//! later attempt completes a missing trigger without sending the data file again, finishes a
//! begun rename, and counts a recorded temporary that is gone as written (SAP may already
//! have taken the trigger): never a second one. A data file gone before its trigger was put
//! in place gets none, and the record says why. A trigger already under the name before the
//! data file is put in place is an earlier delivery's: removed (and recorded) first.

pub mod destination;
pub mod sftp;

use time::OffsetDateTime;
use tokio::time::Instant;

use crate::error::{Error, Result, ResultExt, Step};
use crate::job::{
    DeliveryRecord, DeliveryState, ExistingFilePolicy, ExportedFile, Records, TriggerFile, TriggerRecord,
};
use crate::ports::{Guarded, ObjectStore, RemoteFolder};
pub use destination::{Destination, DestinationRun, Refusal};

/// A temporary's name: hidden and not `.csv`, so SAP's pickup never takes it; the writer's
/// id in it (the job's, or a re-send's: `Records::writer`), so its next attempt knows it for
/// its own; unique per attempt.
pub fn temporary_name(file_name: &str, writer: &str, attempt: u32) -> String {
    format!("{}{attempt}-{:08x}.part", own_temporary_prefix(file_name, writer), fastrand::u32(..))
}

/// How this writer's temporaries of `file_name` begin.
fn own_temporary_prefix(file_name: &str, writer: &str) -> String {
    format!(".{file_name}.{writer}.")
}

/// What stands under the final name, as the existing-file policy reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Existing {
    Absent,
    /// This very file: nothing to send.
    Identical,
    /// Another file the policy lets this one replace.
    Replace,
}

/// The record of one file, `None` when no attempt got as far as the intent.
pub async fn record(store: &impl ObjectStore, records: &Records, file_name: &str) -> Result<Option<DeliveryRecord>> {
    let key = records.delivery(file_name);
    let Some(bytes) = store.get(&key).await.map_err(|e| e.at(Step::Deliver))? else { return Ok(None) };
    serde_json::from_slice(&bytes)
        .map(Some)
        .or_permanent(Step::Deliver, format!("{key} is not a valid delivery record"))
}

pub async fn write(store: &impl ObjectStore, records: &Records, record: &DeliveryRecord) -> Result<()> {
    let key = records.delivery(&record.file.file_name);
    let bytes = serde_json::to_vec_pretty(record).or_permanent(Step::Deliver, "serialising a delivery record")?;
    store.put(&key, bytes, "application/json").await.map_err(|e| e.at(Step::Deliver))
}

fn exists_with_other_content(remote_path: &str) -> Error {
    Error::permanent(
        Step::Deliver,
        format!("{remote_path} exists with other content; policy 'fail' leaves it untouched"),
    )
}

/// What one delivery works with.
pub struct FileDelivery<'a, S> {
    pub store: &'a S,
    /// The job's, or a re-send's: where its records go; its job id names its temporaries.
    pub records: &'a Records,
    pub file: &'a ExportedFile,
    pub policy: ExistingFilePolicy,
    /// This run's number among the file's attempts.
    pub attempt: u32,
    pub deadline: Instant,
    /// The trigger file the target's profile asks for.
    pub trigger: Option<&'a TriggerFile>,
    /// The temporary this run streamed while the export ran, if it came through whole.
    pub streamed: Option<&'a str>,
    /// The job's SAP destination, claimed before any rename.
    pub destination: &'a Destination<'a, S>,
}

impl<S: ObjectStore> FileDelivery<'_, S> {
    /// Delivers the file once, whatever earlier attempts left behind, then its trigger;
    /// returns the delivered record.
    pub async fn run(&self, folder: &mut impl RemoteFolder, earlier: Option<DeliveryRecord>) -> Result<DeliveryRecord> {
        let record = self.deliver_data(folder, earlier).await?;
        self.complete_trigger(folder, record).await
    }

    async fn deliver_data(
        &self,
        folder: &mut impl RemoteFolder,
        earlier: Option<DeliveryRecord>,
    ) -> Result<DeliveryRecord> {
        match earlier {
            Some(record) if record.state == DeliveryState::Delivered => Ok(record),
            Some(record) if record.state == DeliveryState::Intent => self.resume(folder, record).await,
            Some(record) if record.state == DeliveryState::Streaming => {
                if self.streamed == Some(record.temp_name.as_str()) {
                    return self.fresh(folder, Some(record.temp_name)).await;
                }
                // Another run's stream, cut: never renamed, nothing of it reached SAP.
                folder.remove(&record.temp_name).await?;
                self.fresh(folder, None).await
            }
            Some(record) => {
                // Abandoned: its temporary may still be there if the removal was cut.
                folder.remove(&record.temp_name).await?;
                self.fresh(folder, None).await
            }
            None => self.fresh(folder, None).await,
        }
    }

    fn name(&self) -> &str {
        &self.file.file.file_name
    }

    fn new_record(&self, folder: &impl RemoteFolder, state: DeliveryState, temp_name: &str) -> DeliveryRecord {
        DeliveryRecord {
            state,
            file: self.file.file.clone(),
            remote_path: folder.path_of(self.name()),
            temp_name: temp_name.to_owned(),
            attempt: self.attempt,
            uploaded: true,
            taken_by_sap: false,
            replaced: None,
            remote_size: None,
            trigger: self.trigger_record(),
            claim: None,
            updated_at: OffsetDateTime::now_utc(),
        }
    }

    fn trigger_record(&self) -> Option<TriggerRecord> {
        self.trigger.map(|t| TriggerRecord::new(t.name_for(self.name())))
    }

    async fn delivered(&self, mut record: DeliveryRecord) -> Result<DeliveryRecord> {
        record.state = DeliveryState::Delivered;
        record.updated_at = OffsetDateTime::now_utc();
        write(self.store, self.records, &record).await?;
        Ok(record)
    }

    async fn identical(&self, folder: &mut impl RemoteFolder, name: &str) -> Result<bool> {
        let stats = &self.file.file.stats;
        if folder.size(name).await? != Some(stats.bytes) {
            return Ok(false);
        }
        Ok(folder.sha256(name).await?.as_deref() == Some(stats.sha256.as_str()))
    }

    async fn resume(&self, folder: &mut impl RemoteFolder, record: DeliveryRecord) -> Result<DeliveryRecord> {
        let name = self.name().to_owned();
        let temp = record.temp_name.clone();
        let final_present = folder.size(&name).await?.is_some();
        if final_present {
            // Identical bytes under the name: what SAP reads is this job's plan.
            if self.identical(folder, &name).await? {
                tracing::info!(remote = %record.remote_path, "the rename of an earlier attempt went through");
                folder.remove(&temp).await?;
                let mut record = record;
                record.remote_size = Some(self.file.file.stats.bytes);
                return self.delivered(record).await;
            }
            if self.policy == ExistingFilePolicy::Fail {
                return Err(exists_with_other_content(&record.remote_path));
            }
        }
        match folder.size(&temp).await? {
            Some(size) if size == self.file.file.stats.bytes => {
                // Not sent yet: the batch order is checked again before the rename.
                tracing::info!(remote = %record.remote_path, "finishing the rename an earlier attempt began");
                self.put_in_place(folder, record).await
            }
            Some(size) => {
                tracing::warn!(temp, size, "the earlier attempt's temporary is incomplete; sending again");
                self.abandon(folder, record).await?;
                self.fresh(folder, None).await
            }
            None if final_present => {
                // Another file stands under the name and ours is not there to rename. With
                // no other job at the name since, the earlier rename cannot have happened:
                // sent again under the policy. Otherwise the other job's file may have
                // replaced ours after it reached SAP: nobody can tell.
                if !self.destination.unchanged_since(record.claim, self.name()).await? {
                    return Err(self.unknown(&record, "another job's file stands under the name"));
                }
                self.abandon(folder, record).await?;
                self.fresh(folder, None).await
            }
            None => self.taken_by_sap(record).await,
        }
    }

    /// The intent is recorded and neither the temporary nor the file is there: renamed and
    /// taken by SAP, when no other job claimed the destination since; else nobody can tell.
    async fn taken_by_sap(&self, mut record: DeliveryRecord) -> Result<DeliveryRecord> {
        if !self.destination.unchanged_since(record.claim, self.name()).await? {
            return Err(self.unknown(&record, "neither its temporary nor the file is there"));
        }
        tracing::warn!(
            remote = %record.remote_path,
            attempt = record.attempt,
            "the intent was recorded and neither the temporary nor the file is there, and no other job wrote the \
             name since: the rename went through and SAP has taken the file; not sent again"
        );
        record.taken_by_sap = true;
        self.delivered(record).await
    }

    /// An intent whose outcome nobody can tell: another job claimed the destination since
    /// (or the record predates claims). A permanent failure, never a receipt.
    fn unknown(&self, record: &DeliveryRecord, seen: &str) -> Error {
        Error::permanent(
            Step::Deliver,
            format!(
                "{}: the intent of attempt {} was recorded and {seen}, but another job claimed the destination since \
                 (or the record predates claims): whether SAP got this job's file is unknown, so no receipt is \
                 written; check SAP's inbound log",
                record.remote_path, record.attempt
            ),
        )
    }

    /// Claims the destination for the recorded intent's temporary, then puts it under the
    /// name as the policy says; a refused claim abandons the temporary.
    async fn put_in_place(&self, folder: &mut impl RemoteFolder, mut record: DeliveryRecord) -> Result<DeliveryRecord> {
        let generation = match self.destination.claim().await {
            Ok(generation) => generation,
            Err(err) => {
                if self.destination.refusal().is_some() {
                    self.abandon(folder, record).await?;
                }
                return Err(err);
            }
        };
        if record.claim != Some(generation) {
            record.claim = Some(generation);
            record.updated_at = OffsetDateTime::now_utc();
            write(self.store, self.records, &record).await?;
        }
        match self.existing(folder).await {
            Ok(Existing::Absent) => self.rename(folder, record).await,
            Ok(Existing::Replace) => self.replace(folder, record).await,
            Ok(Existing::Identical) => {
                tracing::info!(remote = %record.remote_path, "the identical file is already there");
                folder.remove(&record.temp_name).await?;
                record.uploaded = false;
                record.remote_size = Some(self.file.file.stats.bytes);
                self.delivered(record).await
            }
            // The policy refuses it: nothing of this attempt goes in. A transient failure
            // leaves the recorded intent for the next attempt to resume.
            Err(err) if !err.is_transient() => {
                if let Err(abandon_err) = self.abandon(folder, record).await {
                    tracing::warn!(error = %abandon_err.chain(), "could not abandon the temporary; the next attempt decides from its intent");
                }
                Err(err)
            }
            Err(err) => Err(err),
        }
    }

    /// What the existing-file policy makes of the file under the name now.
    async fn existing(&self, folder: &mut impl RemoteFolder) -> Result<Existing> {
        let name = self.name().to_owned();
        if folder.size(&name).await?.is_none() {
            return Ok(Existing::Absent);
        }
        if self.policy == ExistingFilePolicy::Overwrite {
            return Ok(Existing::Replace);
        }
        if self.identical(folder, &name).await? {
            return Ok(Existing::Identical);
        }
        if self.policy == ExistingFilePolicy::Fail {
            return Err(exists_with_other_content(&folder.path_of(&name)));
        }
        Ok(Existing::Replace)
    }

    /// Records the temporary as abandoned, then removes it: never the other way round, or
    /// its absence could be read as a rename.
    async fn abandon(&self, folder: &mut impl RemoteFolder, mut record: DeliveryRecord) -> Result<()> {
        record.state = DeliveryState::Abandoned;
        record.updated_at = OffsetDateTime::now_utc();
        write(self.store, self.records, &record).await?;
        folder.remove(&record.temp_name).await
    }

    /// Sends the file (or takes `streamed`, this run's complete temporary of it), then
    /// claim, intent, rename, mark.
    async fn fresh(&self, folder: &mut impl RemoteFolder, streamed: Option<String>) -> Result<DeliveryRecord> {
        // Before sending anything: the file may be there already, or the policy refuse it.
        // (Decided again under the claim, as another job may write the name meanwhile.)
        if self.policy != ExistingFilePolicy::Overwrite {
            let existing = self.existing(folder).await;
            let refused = existing.as_ref().is_err_and(|e| !e.is_transient());
            if matches!(existing, Ok(Existing::Identical)) || refused {
                // Not renamed, so not needed: the streamed temporary goes (best effort: it
                // carries the job's id, so a later attempt removes it too).
                if let Some(temp) = &streamed {
                    if let Err(remove_err) = folder.remove(temp).await {
                        tracing::warn!(temp, error = %remove_err.chain(), "could not remove the streamed temporary");
                    }
                }
            }
            if existing? == Existing::Identical {
                tracing::info!(remote = %folder.path_of(self.name()), "the identical file is already there");
                let mut record = self.new_record(folder, DeliveryState::Delivered, "");
                record.uploaded = false;
                record.remote_size = Some(self.file.file.stats.bytes);
                return self.delivered(record).await;
            }
        }
        self.remove_own_temporaries(folder, self.name(), streamed.as_deref()).await;
        let temp = self.temporary(folder, streamed).await?;
        let size = folder.size(&temp).await?;
        if size != Some(self.file.file.stats.bytes) {
            folder.remove(&temp).await?;
            return Err(Error::transient(
                Step::Deliver,
                format!("{temp} holds {size:?} bytes after upload, {} sent", self.file.file.stats.bytes),
            ));
        }
        let mut record = self.new_record(folder, DeliveryState::Intent, &temp);
        match self.destination.claim().await {
            Ok(generation) => record.claim = Some(generation),
            Err(err) => {
                if self.destination.refusal().is_some() {
                    self.abandon(folder, record).await?;
                } else {
                    // Not recorded: the job's next attempt removes it by its name.
                    folder.remove(&temp).await?;
                }
                return Err(err);
            }
        }
        if let Err(err) = write(self.store, self.records, &record).await {
            // The write may have landed although it reported an error: removing the
            // temporary now would make a recorded intent with nothing behind it read as
            // "renamed and taken by SAP". Mark it abandoned first; if that cannot be
            // written either, leave the temporary: a later attempt renames it (intent
            // landed) or removes it as its own (it did not).
            if self.abandon(folder, record).await.is_err() {
                tracing::warn!(temp, "the intent could not be confirmed; the temporary stays for the next attempt");
            }
            return Err(err);
        }
        self.put_in_place(folder, record).await
    }

    /// The complete temporary to rename: `streamed` when it holds the file, else uploaded now.
    async fn temporary(&self, folder: &mut impl RemoteFolder, streamed: Option<String>) -> Result<String> {
        let bytes = self.file.file.stats.bytes;
        if let Some(temp) = streamed {
            if folder.size(&temp).await? == Some(bytes) {
                tracing::info!(temp, "the temporary streamed during the export is complete; not sent again");
                return Ok(temp);
            }
            tracing::warn!(temp, "the streamed temporary is not the file; sending it from the staged copy");
            folder.remove(&temp).await?;
        }
        let temp = temporary_name(self.name(), &self.records.writer(), self.attempt);
        folder.upload(&self.file.path, &temp, self.deadline).await?;
        Ok(temp)
    }

    /// Puts the temporary in place of the file under the name.
    async fn replace(&self, folder: &mut impl RemoteFolder, mut record: DeliveryRecord) -> Result<DeliveryRecord> {
        let name = self.name().to_owned();
        self.clear_stale_trigger(folder, &mut record).await?;
        let how = folder.replace(&record.temp_name, &name).await?;
        tracing::info!(remote = %record.remote_path, policy = ?self.policy, replaced = ?how, "replaced the existing remote file");
        record.replaced = Some(how);
        record.remote_size = folder.size(&name).await.ok().flatten();
        self.delivered(record).await
    }

    async fn rename(&self, folder: &mut impl RemoteFolder, mut record: DeliveryRecord) -> Result<DeliveryRecord> {
        let name = self.name().to_owned();
        self.clear_stale_trigger(folder, &mut record).await?;
        match folder.rename(&record.temp_name, &name).await? {
            Guarded::Written => {
                let mut record = record;
                // What SAP sees, for the receipt; a failed look does not undo the delivery.
                record.remote_size = folder.size(&name).await.ok().flatten();
                self.delivered(record).await
            }
            Guarded::Refused if self.identical(folder, &name).await? => {
                folder.remove(&record.temp_name).await?;
                let mut record = record;
                record.uploaded = false;
                record.remote_size = Some(self.file.file.stats.bytes);
                self.delivered(record).await
            }
            Guarded::Refused => {
                let path = record.remote_path.clone();
                self.abandon(folder, record).await?;
                Err(Error::permanent(
                    Step::Deliver,
                    format!("{path} appeared with other content while delivering; left untouched"),
                ))
            }
        }
    }

    /// Writes the trigger file of a delivered data file, unless the record says it is
    /// settled. Only ever called with the delivered mark recorded: the trigger never
    /// precedes the data file. Its temporary is recorded (the intent) before its rename, so
    /// a later attempt never writes a second trigger after SAP took the first.
    async fn complete_trigger(&self, folder: &mut impl RemoteFolder, record: DeliveryRecord) -> Result<DeliveryRecord> {
        let Some(spec) = self.trigger else { return Ok(record) };
        // A record from before the trigger was configured gets one now.
        let mut trigger = record.trigger.clone().unwrap_or_else(|| TriggerRecord::new(spec.name_for(self.name())));
        if trigger.settled() {
            return Ok(record);
        }
        // The trigger goes under the destination's claim too: a resumed job whose claim ran
        // out may meet a newer batch, and then announces nothing.
        self.destination.claim().await?;
        let name = self.name().to_owned();
        if trigger.name.eq_ignore_ascii_case(&name) {
            return Err(Error::permanent(
                Step::Deliver,
                format!("the trigger's name {} is the data file's; the trigger is not written", trigger.name),
            ));
        }
        let content = spec.content_for(&name, &record.file.stats.sha256);
        let data_there = !record.taken_by_sap && folder.size(&name).await?.is_some();
        if trigger.temp_name.is_some() {
            if let Some(settled) = self.resume_trigger(folder, &record, &mut trigger, &content, data_there).await? {
                return self.trigger_settled(record, trigger, Ok(settled)).await;
            }
        }
        if !data_there {
            // The trigger was never put in place and the data file is gone (SAP took it
            // without waiting, or someone moved it): a trigger now would announce a file
            // that is not there.
            let reason = if record.taken_by_sap {
                "the data file was renamed and taken by SAP before its trigger was written"
            } else {
                "the data file was gone before its trigger was written"
            };
            tracing::warn!(remote = %record.remote_path, trigger = %trigger.name, reason, "trigger not written");
            return self.trigger_settled(record, trigger, Err(reason.to_owned())).await;
        }
        if self.identical_trigger_there(folder, spec, &record, &trigger.name, &content).await? {
            tracing::info!(trigger = %trigger.name, "the identical trigger file is already there");
            return self.trigger_settled(record, trigger, Ok(false)).await;
        }
        let record = self.write_trigger(folder, record, &mut trigger, &content).await?;
        self.trigger_settled(record, trigger, Ok(true)).await
    }

    /// An earlier attempt's recorded trigger temporary: `Some(true)` when the trigger is in
    /// place (renamed then, or now); `None` when the temporary was unrecorded and removed,
    /// and the trigger is still to be written.
    async fn resume_trigger(
        &self,
        folder: &mut impl RemoteFolder,
        record: &DeliveryRecord,
        trigger: &mut TriggerRecord,
        content: &[u8],
        data_there: bool,
    ) -> Result<Option<bool>> {
        let Some(temp) = trigger.temp_name.clone() else { return Ok(None) };
        match folder.size(&temp).await? {
            None => {
                // The temporary goes only by its rename (an abandoned one is unrecorded
                // first): the trigger was put in place, and SAP may have taken it already.
                tracing::info!(trigger = %trigger.name, "the trigger's rename of an earlier attempt went through; not written again");
                Ok(Some(true))
            }
            Some(size) if size == content.len() as u64 && data_there => {
                tracing::info!(trigger = %trigger.name, "finishing the trigger's rename an earlier attempt began");
                self.put_trigger(folder, &temp, &trigger.name).await?;
                Ok(Some(true))
            }
            Some(_) => {
                // Incomplete, or its data file is gone: unrecorded before it is removed,
                // or its absence would read as a rename.
                trigger.temp_name = None;
                let mut unrecorded = record.clone();
                unrecorded.trigger = Some(trigger.clone());
                unrecorded.updated_at = OffsetDateTime::now_utc();
                write(self.store, self.records, &unrecorded).await?;
                folder.remove(&temp).await?;
                Ok(None)
            }
        }
    }

    /// Whether the trigger already stands there with these bytes; another one under the name
    /// under `TRIGGER_FILE_EXISTING=fail` is a permanent failure.
    async fn identical_trigger_there(
        &self,
        folder: &mut impl RemoteFolder,
        spec: &TriggerFile,
        record: &DeliveryRecord,
        name: &str,
        content: &[u8],
    ) -> Result<bool> {
        if folder.size(name).await? == Some(content.len() as u64)
            && folder.sha256(name).await?.as_deref() == Some(crate::job::sha256_hex(content).as_str())
        {
            return Ok(true);
        }
        if folder.size(name).await?.is_some() && spec.existing == ExistingFilePolicy::Fail {
            return Err(Error::permanent(
                Step::Deliver,
                format!(
                    "trigger {} exists with other content; TRIGGER_FILE_EXISTING=fail leaves it untouched (the data \
                     file {} is delivered)",
                    folder.path_of(name),
                    record.remote_path
                ),
            ));
        }
        Ok(false)
    }

    /// Uploads the trigger to a temporary, records it (the intent), renames it into place.
    async fn write_trigger(
        &self,
        folder: &mut impl RemoteFolder,
        mut record: DeliveryRecord,
        trigger: &mut TriggerRecord,
        content: &[u8],
    ) -> Result<DeliveryRecord> {
        let local = self.file.path.with_file_name(format!("{}.trigger", self.name()));
        std::fs::write(&local, content).or_transient(Step::Deliver, format!("writing {}", local.display()))?;
        self.remove_own_temporaries(folder, &trigger.name, None).await;
        let temp = temporary_name(&trigger.name, &self.records.writer(), self.attempt);
        folder.upload(&local, &temp, self.deadline).await?;
        trigger.temp_name = Some(temp.clone());
        record.trigger = Some(trigger.clone());
        record.updated_at = OffsetDateTime::now_utc();
        if let Err(err) = write(self.store, self.records, &record).await {
            // The intent may have landed although the write reported an error: unrecord it
            // before removing the temporary, or leave the temporary for the next attempt.
            let mut unrecorded = record.clone();
            unrecorded.trigger = Some(TriggerRecord { temp_name: None, ..trigger.clone() });
            if write(self.store, self.records, &unrecorded).await.is_ok() {
                let _ = folder.remove(&temp).await;
            } else {
                tracing::warn!(
                    temp,
                    "the trigger's intent could not be confirmed; the temporary stays for the next attempt"
                );
            }
            return Err(err);
        }
        self.put_trigger(folder, &temp, &trigger.name).await?;
        tracing::info!(trigger = %folder.path_of(&trigger.name), "trigger file written after the data file");
        Ok(record)
    }

    /// Renames the trigger's temporary into place, replacing one that stands there (the
    /// existing-file policy was applied before the intent).
    async fn put_trigger(&self, folder: &mut impl RemoteFolder, temp: &str, name: &str) -> Result<()> {
        if folder.rename(temp, name).await? == Guarded::Refused {
            // There (or appeared meanwhile): ours replaces it, as the data file it announces is ours.
            folder.replace(temp, name).await?;
        }
        Ok(())
    }

    /// Records the trigger settled: `Ok(uploaded)` written, `Err(reason)` not written.
    async fn trigger_settled(
        &self,
        mut record: DeliveryRecord,
        mut trigger: TriggerRecord,
        outcome: std::result::Result<bool, String>,
    ) -> Result<DeliveryRecord> {
        match outcome {
            Ok(uploaded) => {
                trigger.written = true;
                trigger.uploaded = uploaded;
            }
            Err(reason) => trigger.not_written = Some(reason),
        }
        record.trigger = Some(trigger);
        self.delivered(record).await
    }

    /// Removes a trigger of an earlier delivery standing under this file's trigger name,
    /// before the data file is put in place: ours comes only after the delivered mark, so any
    /// trigger there now announces other content (a wrong hash, or no file at all while a
    /// replace removes first). Recorded before the data file moves.
    async fn clear_stale_trigger(&self, folder: &mut impl RemoteFolder, record: &mut DeliveryRecord) -> Result<()> {
        let Some(spec) = self.trigger else { return Ok(()) };
        let name = spec.name_for(self.name());
        if folder.size(&name).await?.is_none() {
            return Ok(());
        }
        if spec.existing == ExistingFilePolicy::Fail {
            return Err(Error::permanent(
                Step::Deliver,
                format!(
                    "trigger {} of an earlier delivery is there; TRIGGER_FILE_EXISTING=fail leaves it untouched, so \
                     the data file {} is not put in place beside it",
                    folder.path_of(&name),
                    record.remote_path
                ),
            ));
        }
        folder.remove(&name).await?;
        tracing::warn!(trigger = %folder.path_of(&name), "removed the trigger of an earlier delivery before putting the data file in place");
        let mut trigger = record.trigger.clone().unwrap_or_else(|| TriggerRecord::new(name));
        trigger.stale_removed = true;
        record.trigger = Some(trigger);
        record.updated_at = OffsetDateTime::now_utc();
        write(self.store, self.records, record).await
    }

    /// This job's temporaries of `name` left by earlier attempts that were cut, whatever
    /// their age (the job's lease keeps its other runs out); never another job's, and never
    /// `keep`. Best effort: a failure here delays nothing.
    async fn remove_own_temporaries(&self, folder: &mut impl RemoteFolder, name: &str, keep: Option<&str>) {
        let prefix = own_temporary_prefix(name, &self.records.writer());
        let Ok(entries) = folder.list().await else { return };
        for entry in entries {
            let ours = keep == Some(entry.name.as_str());
            if entry.name.starts_with(&prefix) && entry.name.ends_with(".part") && !ours {
                tracing::info!(remote = %folder.path_of(&entry.name), "removing this job's temporary of a cut attempt");
                let _ = folder.remove(&entry.name).await;
            }
        }
    }
}
