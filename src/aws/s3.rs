//! The staging bucket on S3: conditional create for job manifests, multipart upload of
//! staged CSVs (streamed while the export writes them, or from a file; parts a bounded
//! number at a time), streaming download for resumed jobs.

use std::path::Path;
use std::time::Duration;

use aws_sdk_s3::primitives::{ByteStream, Length};
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use futures_util::stream::{self, StreamExt, TryStreamExt};
use tokio::io::AsyncWriteExt;

use super::classify;
use crate::error::{Error, Result, ResultExt, Step};
use crate::ports::{CreateOutcome, FilePart, Guarded, Listed, ObjectStore, Tagged, PARTS_IN_FLIGHT};

/// Files above this size go up in parts of this size: S3 needs parts of 5 MiB or more,
/// and one PUT of a large file would be retried whole.
pub const MULTIPART_PART_BYTES: u64 = 16 * 1024 * 1024;

#[derive(Clone)]
pub struct S3Store {
    client: Client,
    bucket: String,
}

impl S3Store {
    pub fn new(client: Client, bucket: impl Into<String>) -> Self {
        Self { client, bucket: bucket.into() }
    }

    /// A client from the shared SDK config; path-style addressing when an endpoint
    /// override (a local emulator) is set.
    pub fn from_sdk_config(config: &aws_config::SdkConfig, bucket: impl Into<String>) -> Self {
        // Stated, not left to the default (or AWS_REQUEST_CHECKSUM_CALCULATION): staged
        // bytes go unsigned (`send_part`), and the CRC32 is what S3 checks them by.
        let s3_config = aws_sdk_s3::config::Builder::from(config)
            .force_path_style(config.endpoint_url().is_some())
            .request_checksum_calculation(aws_sdk_s3::config::RequestChecksumCalculation::WhenSupported)
            .build();
        Self::new(Client::from_conf(s3_config), bucket)
    }

    async fn upload_multipart(&self, key: &str, path: &Path, size: u64, content_type: &str) -> Result<()> {
        let upload_id = self.start_multipart(key, content_type).await?;
        let result = self.upload_parts(key, path, size, &upload_id).await;
        if result.is_err() {
            // Parts of an abandoned upload cost storage until a lifecycle rule removes them.
            let _ =
                self.client.abort_multipart_upload().bucket(&self.bucket).key(key).upload_id(&upload_id).send().await;
        }
        result
    }

    /// The file's parts, `PARTS_IN_FLIGHT` at a time, each read from disk as it goes.
    async fn upload_parts(&self, key: &str, path: &Path, size: u64, upload_id: &str) -> Result<()> {
        let count = size.div_ceil(MULTIPART_PART_BYTES);
        let part = |index: u64| async move {
            let offset = index * MULTIPART_PART_BYTES;
            let length = MULTIPART_PART_BYTES.min(size - offset);
            let number = i32::try_from(index + 1)
                .map_err(|_| Error::permanent(Step::Stage, format!("{key}: too many parts")))?;
            let part = FilePart { path: path.to_owned(), offset, length, crc32: None };
            let etag = self.send_part(key, upload_id, number, &part).await?;
            Ok::<_, Error>((number as u32, etag))
        };
        let mut parts: Vec<(u32, String)> =
            stream::iter(0..count).map(part).buffer_unordered(PARTS_IN_FLIGHT).try_collect().await?;
        parts.sort_unstable_by_key(|(number, _)| *number);
        self.complete_multipart(key, upload_id, &parts).await
    }

    /// Sent without hashing the body for the signature (`UNSIGNED-PAYLOAD`): TLS carries
    /// the bytes and a CRC32 lets S3 check them. SHA-256 of every staged byte was a
    /// twentieth of the worker's CPU. The same holds for `upload_file`.
    ///
    /// A streamed part's CRC32 is known and goes with it as `x-amz-checksum-crc32`; for a
    /// part of `upload_file` (`crc32: None`) the SDK computes it, as a trailer of an
    /// `aws-chunked` body, which over plain HTTP (a local endpoint) it also signs 64 KiB at
    /// a time with SHA-256.
    async fn send_part(&self, key: &str, upload_id: &str, number: i32, part: &FilePart) -> Result<String> {
        let uploaded = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(number)
            .set_checksum_crc32(part.crc32.map(crc32_header))
            .body(file_part_body(part).await?)
            .customize()
            .disable_payload_signing()
            .send()
            .await
            .map_err(|e| classify(e, Step::Stage, &format!("uploading part {number} of {key}")))?;
        uploaded
            .e_tag()
            .map(str::to_owned)
            .ok_or_else(|| Error::transient(Step::Stage, format!("S3 gave no ETag for part {number} of {key}")))
    }
}

/// `x-amz-checksum-crc32`: the base64 of the checksum's four bytes, big-endian.
fn crc32_header(crc: u32) -> String {
    STANDARD.encode(crc.to_be_bytes())
}

/// Bytes of a part read from its file at a time: each read is a hop to the blocking pool,
/// so the SDK's 64 KiB made a thousand of them per 63 MB file.
const PART_READ_BYTES: usize = 512 * 1024;

/// A part's body, read from its file as it is sent (again on a retry), never held whole.
async fn file_part_body(part: &FilePart) -> Result<ByteStream> {
    ByteStream::read_from()
        .path(&part.path)
        .offset(part.offset)
        .length(Length::Exact(part.length))
        .buffer_size(PART_READ_BYTES)
        .build()
        .await
        .or_permanent(Step::Stage, format!("reading {}", part.path.display()))
}

impl ObjectStore for S3Store {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.get_tagged(key).await?.map(|tagged| tagged.bytes))
    }

    async fn get_tagged(&self, key: &str) -> Result<Option<Tagged>> {
        let output = match self.client.get_object().bucket(&self.bucket).key(key).send().await {
            Ok(output) => output,
            Err(err) if err.as_service_error().is_some_and(|e| e.is_no_such_key()) => return Ok(None),
            Err(err) => return Err(classify(err, Step::Stage, &format!("reading s3://{}/{key}", self.bucket))),
        };
        let etag = output.e_tag().unwrap_or_default().to_owned();
        let modified = output.last_modified().and_then(|t| time::OffsetDateTime::from_unix_timestamp(t.secs()).ok());
        let bytes = output.body.collect().await.or_transient(Step::Stage, format!("reading the body of {key}"))?;
        Ok(Some(Tagged { bytes: bytes.into_bytes().to_vec(), etag, modified }))
    }

    async fn replace(&self, key: &str, bytes: Vec<u8>, content_type: &str, etag: &str) -> Result<Guarded> {
        let sent = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .if_match(etag)
            .body(ByteStream::from(bytes))
            .send()
            .await;
        match sent {
            Ok(_) => Ok(Guarded::Written),
            // 412: the ETag changed; 409: another conditional write was in flight and won.
            Err(err) if matches!(precondition_status(&err), Some(412 | 409)) => Ok(Guarded::Refused),
            // The object was deleted meanwhile: the condition no longer holds either.
            Err(err) if err.as_service_error().is_some_and(|e| e.meta().code() == Some("NoSuchKey")) => {
                Ok(Guarded::Refused)
            }
            Err(err) => Err(classify(err, Step::Stage, &format!("replacing s3://{}/{key}", self.bucket))),
        }
    }

    async fn put(&self, key: &str, bytes: Vec<u8>, content_type: &str) -> Result<()> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map_err(|e| classify(e, Step::Stage, &format!("writing s3://{}/{key}", self.bucket)))?;
        Ok(())
    }

    async fn create(&self, key: &str, bytes: Vec<u8>, content_type: &str) -> Result<CreateOutcome> {
        // S3 answers 409 ConditionalRequestConflict to a conditional write that races
        // another in flight: the race is decided a moment later, so ask again.
        for pause_ms in [20, 50, 100, 200, 400, 0] {
            let sent = self
                .client
                .put_object()
                .bucket(&self.bucket)
                .key(key)
                .content_type(content_type)
                .if_none_match("*")
                .body(ByteStream::from(bytes.clone()))
                .send()
                .await;
            let err = match sent {
                Ok(_) => return Ok(CreateOutcome::Created),
                Err(err) => err,
            };
            match precondition_status(&err) {
                Some(412) => return Ok(CreateOutcome::AlreadyExists),
                Some(409) if pause_ms > 0 => {
                    tokio::time::sleep(Duration::from_millis(pause_ms)).await;
                    continue;
                }
                _ => {}
            }
            return Err(classify(err, Step::Stage, &format!("creating s3://{}/{key}", self.bucket)));
        }
        Err(Error::transient(Step::Stage, format!("creating {key}: conditional writes kept conflicting")))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Listed>> {
        let mut pages = self.client.list_objects_v2().bucket(&self.bucket).prefix(prefix).into_paginator().send();
        let mut listed = Vec::new();
        while let Some(page) = pages.next().await {
            let page =
                page.map_err(|err| classify(err, Step::Stage, &format!("listing s3://{}/{prefix}", self.bucket)))?;
            for object in page.contents() {
                let Some(key) = object.key() else { continue };
                listed.push(Listed {
                    key: key.to_owned(),
                    size: object.size().map_or(0, |n| n.max(0) as u64),
                    modified: object
                        .last_modified()
                        .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t.secs()).ok()),
                });
            }
        }
        Ok(listed)
    }

    async fn exists(&self, key: &str) -> Result<bool> {
        match self.client.head_object().bucket(&self.bucket).key(key).send().await {
            Ok(_) => Ok(true),
            Err(err) if err.as_service_error().is_some_and(|e| e.is_not_found()) => Ok(false),
            Err(err) => Err(classify(err, Step::Stage, &format!("checking s3://{}/{key}", self.bucket))),
        }
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| classify(e, Step::Stage, &format!("deleting s3://{}/{key}", self.bucket)))?;
        Ok(())
    }

    async fn delete_if_match(&self, key: &str, etag: &str) -> Result<Guarded> {
        let sent = self.client.delete_object().bucket(&self.bucket).key(key).if_match(etag).send().await;
        match sent {
            Ok(_) => Ok(Guarded::Written),
            Err(err) if matches!(precondition_status(&err), Some(412 | 409)) => Ok(Guarded::Refused),
            Err(err) if err.as_service_error().is_some_and(|e| e.meta().code() == Some("NoSuchKey")) => {
                Ok(Guarded::Refused)
            }
            Err(err) => Err(classify(err, Step::Stage, &format!("deleting s3://{}/{key} if unchanged", self.bucket))),
        }
    }

    async fn upload_file(&self, key: &str, path: &Path, content_type: &str) -> Result<()> {
        let size =
            tokio::fs::metadata(path).await.or_permanent(Step::Stage, format!("reading {}", path.display()))?.len();
        if size > MULTIPART_PART_BYTES {
            return self.upload_multipart(key, path, size, content_type).await;
        }
        let body =
            ByteStream::from_path(path).await.or_permanent(Step::Stage, format!("reading {}", path.display()))?;
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .body(body)
            .customize()
            .disable_payload_signing()
            .send()
            .await
            .map_err(|e| classify(e, Step::Stage, &format!("uploading s3://{}/{key}", self.bucket)))?;
        Ok(())
    }

    async fn start_multipart(&self, key: &str, content_type: &str) -> Result<String> {
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .send()
            .await
            .map_err(|e| {
                classify(e, Step::Stage, &format!("starting multipart upload of s3://{}/{key}", self.bucket))
            })?;
        created
            .upload_id()
            .map(str::to_owned)
            .ok_or_else(|| Error::transient(Step::Stage, format!("S3 gave no upload id for {key}")))
    }

    async fn upload_part(&self, key: &str, upload_id: &str, number: u32, part: &FilePart) -> Result<String> {
        let number =
            i32::try_from(number).map_err(|_| Error::permanent(Step::Stage, format!("{key}: too many parts")))?;
        self.send_part(key, upload_id, number, part).await
    }

    async fn complete_multipart(&self, key: &str, upload_id: &str, parts: &[(u32, String)]) -> Result<()> {
        let parts = parts
            .iter()
            .map(|(number, etag)| CompletedPart::builder().part_number(*number as i32).e_tag(etag).build())
            .collect();
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
            .send()
            .await
            .map_err(|e| classify(e, Step::Stage, &format!("completing multipart upload of {key}")))?;
        Ok(())
    }

    async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<()> {
        self.client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await
            .map_err(|e| classify(e, Step::Stage, &format!("aborting multipart upload of {key}")))?;
        Ok(())
    }

    async fn download_file(&self, key: &str, path: &Path) -> Result<bool> {
        let output = match self.client.get_object().bucket(&self.bucket).key(key).send().await {
            Ok(output) => output,
            Err(err) if err.as_service_error().is_some_and(|e| e.is_no_such_key()) => return Ok(false),
            Err(err) => return Err(classify(err, Step::Stage, &format!("reading s3://{}/{key}", self.bucket))),
        };
        let local =
            |e: std::io::Error| Error::transient(Step::Stage, format!("writing {}", path.display())).caused_by(e);
        let mut file = tokio::fs::File::create(path).await.map_err(local)?;
        let mut body = output.body.into_async_read();
        tokio::io::copy(&mut body, &mut file)
            .await
            .or_transient(Step::Stage, format!("downloading s3://{}/{key}", self.bucket))?;
        file.flush().await.map_err(local)?;
        Ok(true)
    }
}

/// The HTTP status of a refused conditional write (412 PreconditionFailed, 409
/// ConditionalRequestConflict), which the SDK reports as an unmodelled service error.
fn precondition_status<E: aws_sdk_s3::error::ProvideErrorMetadata>(
    err: &aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> Option<u16> {
    let service = match err {
        aws_sdk_s3::error::SdkError::ServiceError(service) => service,
        _ => return None,
    };
    let status = service.raw().status().as_u16();
    let code = service.err().code().unwrap_or("");
    match (status, code) {
        (412, _) | (_, "PreconditionFailed") => Some(412),
        (409, _) | (_, "ConditionalRequestConflict") => Some(409),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parts_crc32_goes_as_the_base64_of_its_big_endian_bytes() {
        // The CRC32 check value of "123456789" is 0xCBF43926.
        assert_eq!(crc32fast::hash(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32_header(0xCBF4_3926), "y/Q5Jg==");
    }
}
