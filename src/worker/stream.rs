//! The export streamed while it runs: each file's bytes, as the converter writes them, go up
//! to S3 staging as a multipart upload (parts a bounded number at a time) and into an SFTP
//! temporary (named in a `streaming` delivery record first, so a crash leaves nothing a
//! later attempt cannot find). Once the export is verified the staging upload is completed
//! and the index written, and the temporary waits for the rename; a failed export aborts
//! the upload and removes the temporary. A stream that fails costs nothing but time: the
//! file is then staged whole from the spool, or delivered from the staged copy.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{self, StreamExt, TryStreamExt};
use time::OffsetDateTime;
use tokio::sync::mpsc;

use super::{Run, Worker};
use crate::csv_out::FileStats;
use crate::delivery;
use crate::error::{Error, Result, Step};
use crate::job::ExportedFile;
use crate::job::{DeliveryRecord, DeliveryState, Manifest, StagedFile};
use crate::outlet::StreamedFile;
use crate::ports::{FileDrop, FilePart, JobQueue, ObjectStore, RemoteFolder, WorkbookSource};
use crate::secrets::SecretSource;

/// How the export is streamed.
#[derive(Debug, Clone)]
pub struct StreamOptions {
    /// Bytes per staging part (S3: at least 5 MiB but for the last).
    pub part_bytes: usize,
    /// Staging parts of one file uploaded at once.
    pub parts_in_flight: usize,
    /// Bytes the converter hands on at a time, and how many may wait per destination.
    pub chunk_bytes: usize,
    pub depth: usize,
    /// How long the converter waits on a full destination before dropping it: the most a
    /// stream can hold the export back per chunk.
    pub stall: Duration,
    /// How long one staging call of the stream (start, a part) may take before the stream
    /// gives up and the file is staged whole (the SDK sets no operation timeout).
    pub call_timeout: Duration,
    /// Whether the SFTP temporary is written during the export (else only at delivery).
    pub sftp: bool,
}

impl Default for StreamOptions {
    fn default() -> Self {
        Self {
            // S3's smallest part, two at a time, and a megabyte of chunks per destination:
            // what keeps the streams abreast of the export, no more (memory is a goal:
            // docs/performance.md, memory near the limit).
            part_bytes: 5 * 1024 * 1024,
            parts_in_flight: 2,
            chunk_bytes: 256 * 1024,
            depth: 4,
            stall: Duration::from_secs(1),
            call_timeout: Duration::from_secs(60),
            sftp: true,
        }
    }
}

/// A staging upload whose parts are all up, waiting for the export's verdict.
#[derive(Debug)]
pub(super) struct PendingStage {
    key: String,
    upload_id: String,
    parts: Vec<(u32, String)>,
    bytes: u64,
}

/// What streaming left of one file.
#[derive(Debug)]
pub(super) struct Streamed {
    file_name: String,
    /// `None`: staging did not come through; the file is staged whole from the spool.
    staging: Option<PendingStage>,
    /// The SFTP temporary and the bytes it holds; `None`: delivery sends the file.
    temporary: Option<(String, u64)>,
    /// The temporary named in a `streaming` record by this run, whether or not its
    /// stream came through: what must go if the job ends without renaming it.
    written: Option<String>,
}

/// The temporaries this run named in `streaming` records: (file name, temporary).
pub(super) fn streamed_temporaries(streamed: &[Streamed]) -> Vec<(String, String)> {
    streamed.iter().filter_map(|s| Some((s.file_name.clone(), s.written.clone()?))).collect()
}

/// The staged copy's media type, by the file's format.
fn content_type(file_name: &str) -> &'static str {
    if file_name.ends_with(".xml") {
        "application/xml"
    } else {
        "text/csv"
    }
}

/// The SFTP temporaries that came through whole, by file name, for delivery.
pub(super) type Temporaries = BTreeMap<String, String>;

impl<S, K, W, D, Q> Worker<S, K, W, D, Q>
where
    S: ObjectStore,
    K: SecretSource + 'static,
    W: WorkbookSource,
    D: FileDrop,
    Q: JobQueue,
{
    /// Takes each file the export announces and streams it to staging and SFTP, until the
    /// export ends; the streams' outcomes, and the SFTP folder when it is still usable.
    pub(super) async fn pump(
        &self,
        run: &Run,
        manifest: &Manifest,
        mut announced: mpsc::UnboundedReceiver<StreamedFile>,
    ) -> (Vec<Streamed>, Option<D::Folder>) {
        let mut folder: Option<D::Folder> = None;
        let mut opened = !self.stream.sftp;
        let mut streamed = Vec::new();
        while let Some(file) = announced.recv().await {
            let StreamedFile { worksheet, file_name, spool, staging, remote } = file;
            let sftp = async {
                if !opened {
                    opened = true;
                    folder = self.open_folder(run, manifest).await;
                }
                let (temporary, written) = match folder.as_mut() {
                    Some(f) => self.stream_to_folder(run, f, &worksheet, &file_name, remote).await,
                    None => (None, None),
                };
                if written.is_some() && temporary.is_none() {
                    // A folder whose stream failed may have lost its connection; the
                    // temporaries written so far are removed on a folder opened anew.
                    folder = None;
                }
                (temporary, written)
            };
            let staged = self.stream_to_staging(run, &file_name, &spool, staging);
            let (staging, (temporary, written)) = tokio::join!(staged, sftp);
            streamed.push(Streamed { file_name, staging, temporary, written });
        }
        (streamed, folder)
    }

    async fn open_folder(&self, run: &Run, manifest: &Manifest) -> Option<D::Folder> {
        match self.open_target(&manifest.target, run.work_deadline + self.settings.deadline_margin / 4).await {
            Ok(folder) => Some(folder),
            Err(err) => {
                tracing::warn!(error = %err.chain(), "could not open the SFTP folder during the export; the file is sent after staging");
                None
            }
        }
    }

    /// The file into a temporary, named in a `streaming` record first: the temporary and
    /// its bytes when it came through (else the folder removed it), and the temporary's
    /// name once the record is written.
    async fn stream_to_folder(
        &self,
        run: &Run,
        folder: &mut D::Folder,
        worksheet: &str,
        file_name: &str,
        chunks: mpsc::Receiver<Bytes>,
    ) -> (Option<(String, u64)>, Option<String>) {
        let warn = |err: Error| {
            tracing::warn!(file = file_name, error = %err.chain(), "streaming to the SFTP temporary failed; the file is sent from the staged copy");
        };
        let Some((temp, attempt)) = self.name_temporary(run, folder, file_name).await.map_err(warn).ok().flatten()
        else {
            return (None, None);
        };
        let record = DeliveryRecord {
            state: DeliveryState::Streaming,
            file: StagedFile {
                worksheet: worksheet.to_owned(),
                file_name: file_name.to_owned(),
                stats: FileStats::default(),
            },
            remote_path: folder.path_of(file_name),
            temp_name: temp.clone(),
            attempt,
            // Nothing is known of the file yet: it is being written.
            uploaded: false,
            taken_by_sap: false,
            replaced: None,
            remote_size: None,
            trigger: None,
            claim: None,
            updated_at: OffsetDateTime::now_utc(),
        };
        if let Err(err) = delivery::write(&self.store, &run.records, &record).await {
            warn(err);
            return (None, None);
        }
        match folder.upload_stream(chunks, &temp, run.work_deadline).await {
            Ok(bytes) => (Some((temp.clone(), bytes)), Some(temp)),
            Err(err) => {
                warn(err);
                (None, Some(temp))
            }
        }
    }

    /// This attempt's temporary name and number; `None` when an intent or a delivery
    /// stands (delivery decides from it, not a new stream).
    async fn name_temporary(
        &self,
        run: &Run,
        folder: &mut D::Folder,
        file_name: &str,
    ) -> Result<Option<(String, u32)>> {
        let earlier = delivery::record(&self.store, &run.records, file_name).await?;
        let attempt = match earlier {
            None => 1,
            Some(record) if matches!(record.state, DeliveryState::Streaming | DeliveryState::Abandoned) => {
                // A cut stream of an earlier run: never renamed.
                folder.remove(&record.temp_name).await?;
                record.attempt + 1
            }
            Some(_) => return Ok(None),
        };
        Ok(Some((delivery::temporary_name(file_name, &run.records.writer(), attempt), attempt)))
    }

    /// The file as a multipart upload, parts going up while later bytes still arrive; not
    /// completed here. `None` (the upload aborted) when it did not come through. The
    /// chunks only count: each part is read from the spool, which holds every byte of a
    /// chunk before the chunk is sent, so no part is held in memory.
    async fn stream_to_staging(
        &self,
        run: &Run,
        file_name: &str,
        spool: &Path,
        chunks: mpsc::Receiver<Bytes>,
    ) -> Option<PendingStage> {
        let key = run.records.staged_file(file_name);
        // No retries here: the file is on disk, so a failed or slow stream only falls back
        // to staging it whole, and waiting out a retry would hold back the export.
        let upload_id = match self
            .bounded(run, "start the staging upload", self.store.start_multipart(&key, content_type(file_name)))
            .await
        {
            Ok(id) => id,
            Err(err) => {
                tracing::warn!(error = %err.chain(), "could not start the staging upload; the file is staged after the export");
                return None;
            }
        };
        let (key, upload_id) = (&key, &upload_id);
        let uploaded = parts(chunks, self.stream.part_bytes.max(1) as u64)
            .enumerate()
            .map(|(index, PartSpan { offset, length, crc32 })| async move {
                let number = u32::try_from(index + 1)
                    .map_err(|_| Error::permanent(Step::Stage, format!("{key}: too many parts")))?;
                let part = FilePart { path: spool.to_owned(), offset, length, crc32: Some(crc32) };
                let etag =
                    self.bounded(run, "stage a part", self.store.upload_part(key, upload_id, number, &part)).await?;
                Ok::<_, Error>((number, etag, length))
            })
            .buffer_unordered(self.stream.parts_in_flight.max(1))
            .try_collect::<Vec<_>>()
            .await;
        match uploaded {
            Ok(mut parts) if !parts.is_empty() => {
                parts.sort_unstable_by_key(|(number, _, _)| *number);
                let bytes = parts.iter().map(|(_, _, length)| length).sum();
                let parts = parts.into_iter().map(|(number, etag, _)| (number, etag)).collect();
                Some(PendingStage { key: key.clone(), upload_id: upload_id.clone(), parts, bytes })
            }
            outcome => {
                if let Err(err) = outcome {
                    tracing::warn!(error = %err.chain(), "streaming to staging failed; the file is staged after the export");
                }
                self.abort(key, upload_id).await;
                None
            }
        }
    }

    /// One staging call of the stream, cut after `call_timeout` (or at the deadline).
    async fn bounded<T>(&self, run: &Run, what: &str, call: impl Future<Output = Result<T>>) -> Result<T> {
        let until = run.work_deadline.min(tokio::time::Instant::now() + self.stream.call_timeout);
        match tokio::time::timeout_at(until, call).await {
            Ok(outcome) => outcome,
            Err(_) => Err(Error::transient(
                Step::Stage,
                format!("{what}: no answer within {} ms; the stream gives up", self.stream.call_timeout.as_millis()),
            )),
        }
    }

    async fn abort(&self, key: &str, upload_id: &str) {
        if let Err(err) = self.store.abort_multipart(key, upload_id).await {
            tracing::warn!(error = %err.chain(), key, "could not abort a staging upload; the bucket's lifecycle rule removes its parts");
        }
    }

    /// The export is verified: each file's staging upload completed (or the file uploaded
    /// whole from the spool), then the index that marks staging complete. The temporaries
    /// that came through whole are returned for delivery.
    pub(super) async fn settle(
        &self,
        run: &Run,
        files: &[ExportedFile],
        streamed: &mut [Streamed],
    ) -> Result<Temporaries> {
        let retry = &self.settings.retry;
        let mut temporaries = Temporaries::new();
        for file in files {
            let stats = &file.file.stats;
            let entry = streamed.iter_mut().find(|s| s.file_name == file.file.file_name);
            let (pending, temporary) = match entry {
                Some(entry) => (entry.staging.take(), entry.temporary.clone()),
                None => (None, None),
            };
            let mut staged = false;
            if let Some(pending) = pending {
                if pending.bytes == stats.bytes {
                    let completed = retry
                        .run(run.work_deadline, Step::Stage, "complete the staging upload", |_| {
                            self.store.complete_multipart(&pending.key, &pending.upload_id, &pending.parts)
                        })
                        .await;
                    match completed {
                        Ok(_) => staged = true,
                        Err(err) => {
                            tracing::warn!(error = %err.chain(), "could not complete the staging upload; staging the file whole");
                            self.abort(&pending.key, &pending.upload_id).await;
                        }
                    }
                } else {
                    tracing::warn!(
                        streamed = pending.bytes,
                        written = stats.bytes,
                        "the staging stream is not the file; staging the file whole"
                    );
                    self.abort(&pending.key, &pending.upload_id).await;
                }
            }
            if !staged {
                let key = run.records.staged_file(&file.file.file_name);
                retry
                    .run(run.work_deadline, Step::Stage, "stage CSV", |_| {
                        self.store.upload_file(&key, &file.path, content_type(&file.file.file_name))
                    })
                    .await?;
            }
            match temporary {
                Some((temp, bytes)) if bytes == stats.bytes => {
                    temporaries.insert(file.file.file_name.clone(), temp);
                }
                Some((temp, bytes)) => {
                    tracing::warn!(
                        temp,
                        streamed = bytes,
                        written = stats.bytes,
                        "the SFTP stream is not the file; it is sent from the staged copy"
                    );
                }
                None => {}
            }
        }
        self.write_staged_index(run, files).await?;
        Ok(temporaries)
    }

    /// A failed export: its staging uploads aborted and its temporaries abandoned, so
    /// nothing of it stays behind. Best effort: a later attempt finds the temporaries by
    /// their records, and the bucket's lifecycle rule removes parts.
    pub(super) async fn discard(
        &self,
        run: &Run,
        manifest: &Manifest,
        streamed: Vec<Streamed>,
        folder: Option<D::Folder>,
    ) {
        for entry in &streamed {
            if let Some(pending) = &entry.staging {
                self.abort(&pending.key, &pending.upload_id).await;
            }
        }
        // Before delivery: no intent can name them, so they go even when S3 cannot say.
        self.abandon_temporaries(run, manifest, &streamed_temporaries(&streamed), folder, false).await;
    }

    /// The job ends without renaming them: each streamed temporary whose record still says
    /// `streaming` is marked abandoned, then removed, on a folder opened anew when the
    /// stream's own is gone. A temporary that reached the intent is left to the next
    /// attempt, which decides from the intent; so once delivery may have begun
    /// (`delivering`), a temporary whose record cannot be read is left too. Best effort:
    /// the records let a later attempt remove what is left.
    pub(super) async fn abandon_temporaries(
        &self,
        run: &Run,
        manifest: &Manifest,
        temporaries: &[(String, String)],
        folder: Option<D::Folder>,
        delivering: bool,
    ) {
        let mut folder = folder;
        for (file_name, temp) in temporaries {
            match delivery::record(&self.store, &run.records, file_name).await {
                Ok(Some(record)) if record.state == DeliveryState::Streaming && record.temp_name == *temp => {
                    let abandoned = DeliveryRecord {
                        state: DeliveryState::Abandoned,
                        updated_at: OffsetDateTime::now_utc(),
                        ..record
                    };
                    if let Err(err) = delivery::write(&self.store, &run.records, &abandoned).await {
                        // Still `streaming`, which a later attempt treats alike: never renamed.
                        tracing::warn!(temp, error = %err.chain(), "could not mark a streamed temporary abandoned");
                    }
                }
                // Delivery moved it on (an intent, a delivery) or took it: not ours to remove.
                Ok(_) if delivering => continue,
                Ok(_) => {}
                Err(err) if delivering => {
                    tracing::warn!(temp, error = %err.chain(), "could not read a streamed temporary's record; the next attempt removes it");
                    continue;
                }
                Err(err) => {
                    tracing::warn!(temp, error = %err.chain(), "could not read a streamed temporary's record; removing it all the same (nothing was delivered)");
                }
            }
            if folder.is_none() {
                folder = self.open_folder(run, manifest).await;
            }
            let Some(open) = folder.as_mut() else {
                tracing::warn!(
                    temp,
                    "no SFTP folder to remove the streamed temporaries from; the next attempt removes them"
                );
                return;
            };
            match open.remove(temp).await {
                Ok(()) => tracing::info!(temp, "removed a streamed temporary the job will not rename"),
                Err(err) => {
                    tracing::warn!(temp, error = %err.chain(), "could not remove a streamed temporary; the next attempt removes it");
                    folder = None;
                }
            }
        }
    }

    /// A job refused as older ends here, and nothing of it is renamed again: each recorded
    /// temporary of `files` (streaming, or an intent) is marked abandoned, then every
    /// temporary carrying the job's id is removed from the folder (an intent that could not be
    /// marked keeps its temporary, or its absence would read as a rename). Best effort.
    pub(super) async fn remove_refused_temporaries(
        &self,
        run: &Run,
        manifest: &Manifest,
        files: &[ExportedFile],
        folder: Option<D::Folder>,
    ) {
        let mut kept = Vec::new();
        for file in files {
            let record = match delivery::record(&self.store, &run.records, &file.file.file_name).await {
                Ok(Some(record)) if matches!(record.state, DeliveryState::Streaming | DeliveryState::Intent) => record,
                Ok(_) => continue,
                Err(err) => {
                    tracing::warn!(file = %file.file.file_name, error = %err.chain(), "could not read a delivery record of the refused job; its temporary stays");
                    kept.push(String::new());
                    continue;
                }
            };
            let temp = record.temp_name.clone();
            let abandoned =
                DeliveryRecord { state: DeliveryState::Abandoned, updated_at: OffsetDateTime::now_utc(), ..record };
            if let Err(err) = delivery::write(&self.store, &run.records, &abandoned).await {
                tracing::warn!(temp, error = %err.chain(), "could not mark the refused job's temporary abandoned; it stays");
                kept.push(temp);
            }
        }
        if kept.iter().any(String::is_empty) {
            return;
        }
        let mut folder = match folder {
            Some(folder) => Some(folder),
            None => self.open_folder(run, manifest).await,
        };
        let Some(open) = folder.as_mut() else {
            tracing::warn!("no SFTP folder to remove the refused job's temporaries from; they stay, named by its id");
            return;
        };
        let marker = format!(".{}.", run.records.writer());
        let entries = match open.list().await {
            Ok(entries) => entries,
            Err(err) => {
                tracing::warn!(error = %err.chain(), "could not list the folder for the refused job's temporaries; they stay, named by its id");
                return;
            }
        };
        for entry in entries {
            let ours = entry.name.starts_with('.') && entry.name.contains(&marker) && entry.name.ends_with(".part");
            if ours && !kept.contains(&entry.name) {
                match open.remove(&entry.name).await {
                    Ok(()) => tracing::info!(temp = %entry.name, "removed a temporary of the refused job"),
                    Err(err) => {
                        tracing::warn!(temp = %entry.name, error = %err.chain(), "could not remove a temporary of the refused job")
                    }
                }
            }
        }
    }
}

/// One part of a streamed file: where it lies in the spool and its CRC32.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PartSpan {
    offset: u64,
    length: u64,
    crc32: u32,
}

/// Counting and checksumming the chunks into parts.
struct PartCounter {
    chunks: mpsc::Receiver<Bytes>,
    /// What is left of the chunk at hand.
    pending: Bytes,
    start: u64,
    received: u64,
    crc: crc32fast::Hasher,
}

impl PartCounter {
    fn close(&mut self, length: u64) -> PartSpan {
        let crc32 = std::mem::take(&mut self.crc).finalize();
        let part = PartSpan { offset: self.start, length, crc32 };
        (self.start, self.received) = (self.start + length, 0);
        part
    }
}

/// The parts the chunks make: `part_bytes` each, the last one shorter. A part is given once
/// the chunks have reached its end (so it is in the spool), with the CRC32 of its bytes,
/// taken from the chunks as they pass.
fn parts(chunks: mpsc::Receiver<Bytes>, part_bytes: u64) -> impl futures_util::Stream<Item = PartSpan> {
    let counter = PartCounter { chunks, pending: Bytes::new(), start: 0, received: 0, crc: crc32fast::Hasher::new() };
    stream::unfold(Some(counter), move |counter| async move {
        let mut counter = counter?;
        loop {
            if counter.pending.is_empty() {
                match counter.chunks.recv().await {
                    Some(chunk) => counter.pending = chunk,
                    None if counter.received == 0 => return None,
                    None => return Some((counter.close(counter.received), None)),
                }
                continue;
            }
            let room = usize::try_from(part_bytes - counter.received).unwrap_or(usize::MAX);
            let head = counter.pending.split_to(room.min(counter.pending.len()));
            counter.crc.update(&head);
            counter.received += head.len() as u64;
            if counter.received == part_bytes {
                return Some((counter.close(part_bytes), Some(counter)));
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(offset: u64, bytes: &[u8]) -> PartSpan {
        PartSpan { offset, length: bytes.len() as u64, crc32: crc32fast::hash(bytes) }
    }

    #[tokio::test]
    async fn chunks_are_counted_into_full_parts_and_a_shorter_last_one_each_with_its_crc32() {
        let (tx, rx) = mpsc::channel(8);
        let sender = tokio::spawn(async move {
            for byte in 0u8..10 {
                tx.send(Bytes::from(vec![byte; 3])).await.unwrap();
            }
        });
        let got: Vec<PartSpan> = parts(rx, 7).collect().await;
        sender.await.unwrap();
        let file: Vec<u8> = (0u8..10).flat_map(|b| [b; 3]).collect();
        let expected: Vec<PartSpan> = file.chunks(7).enumerate().map(|(i, part)| span(i as u64 * 7, part)).collect();
        assert_eq!(got, expected);
        assert_eq!(got.last().map(|p| p.length), Some(2));
    }

    #[tokio::test]
    async fn a_chunk_larger_than_a_part_makes_several_and_whole_parts_end_without_an_empty_one() {
        let (tx, rx) = mpsc::channel(8);
        let file: Vec<u8> = (0..21u8).collect();
        tx.send(Bytes::from(file[..17].to_vec())).await.unwrap();
        tx.send(Bytes::from(file[17..].to_vec())).await.unwrap();
        drop(tx);
        let got: Vec<PartSpan> = parts(rx, 7).collect().await;
        assert_eq!(got, [span(0, &file[..7]), span(7, &file[7..14]), span(14, &file[14..])]);
        let (tx, rx) = mpsc::channel::<Bytes>(1);
        drop(tx);
        assert!(parts(rx, 7).collect::<Vec<_>>().await.is_empty());
    }
}
