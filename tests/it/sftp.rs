//! SFTP delivery against a real OpenSSH sshd on loopback.

use std::time::Duration;

use maestro_relay::error::{ErrorClass, Result};
use maestro_relay::memory::MemoryStore;
use maestro_relay::ports::FileDrop;
use maestro_relay::secrets::SftpCredentials;
use maestro_relay::sftp::{ExistingFilePolicy, SftpDrop, SftpOptions};
use maestro_relay::worker::delivery::FileDelivery;
use secrecy::SecretString;
use sha2::{Digest, Sha256};

use crate::helpers::{free_port, random_upload, Sshd, Upload};

#[derive(Debug, PartialEq, Eq)]
struct Delivery {
    remote_path: String,
    uploaded: bool,
}

/// One file's first delivery through the SFTP adapter (no earlier record), until `deadline`.
async fn deliver_until(
    credentials: SftpCredentials,
    options: SftpOptions,
    upload: Upload,
    deadline: tokio::time::Instant,
) -> Result<Delivery> {
    let policy = options.existing;
    let mut folder = SftpDrop { options }.open(credentials, deadline).await?;
    let store = MemoryStore::new();
    let file = upload.exported();
    let one = FileDelivery { store: &store, job_id: "job", file: &file, policy, attempt: 1, deadline };
    let record = one.run(&mut folder, None).await?;
    Ok(Delivery { remote_path: record.remote_path, uploaded: record.uploaded })
}

async fn deliver(credentials: SftpCredentials, options: SftpOptions, upload: Upload) -> Result<Delivery> {
    deliver_until(credentials, options, upload, tokio::time::Instant::now() + Duration::from_secs(120)).await
}

fn credentials(sshd: &Sshd, target: &str) -> SftpCredentials {
    serde_json::from_value(sshd.secret(target)).expect("credentials")
}

fn options(existing: ExistingFilePolicy) -> SftpOptions {
    SftpOptions {
        connect_timeout: Duration::from_secs(5),
        io_timeout: Duration::from_secs(20),
        existing,
        ..SftpOptions::default()
    }
}

fn sha256_of(path: &std::path::Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).expect("remote file")))
}

#[tokio::test]
async fn a_file_is_delivered_under_its_final_name_with_no_temporary_left() {
    let sshd = Sshd::start();
    let dir = tempfile::tempdir().expect("dir");
    let upload = random_upload(&dir, "Orders-PF_20261124060000.csv", 300_000, 1);
    let delivery =
        deliver(credentials(&sshd, "PF2"), options(ExistingFilePolicy::Fail), upload.clone()).await.expect("delivered");
    assert!(delivery.uploaded);
    assert_eq!(sshd.files("PF2"), std::slice::from_ref(&upload.file_name));
    assert_eq!(sha256_of(&sshd.folder("PF2").join(&upload.file_name)), upload.sha256);
}

#[tokio::test]
async fn a_file_of_100_mb_arrives_with_the_same_sha256() {
    let sshd = Sshd::start();
    let dir = tempfile::tempdir().expect("dir");
    let upload = random_upload(&dir, "Big-PF.csv", 100 * 1024 * 1024, 2);
    deliver(credentials(&sshd, "PF2"), options(ExistingFilePolicy::Fail), upload.clone()).await.expect("delivered");
    assert_eq!(sha256_of(&sshd.folder("PF2").join("Big-PF.csv")), upload.sha256);
}

#[tokio::test]
async fn a_wrong_host_key_is_permanent_and_nothing_is_written() {
    let sshd = Sshd::start();
    let dir = tempfile::tempdir().expect("dir");
    let mut creds = credentials(&sshd, "PF2");
    creds.host_key_sha256 = "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into();
    let err =
        deliver(creds, options(ExistingFilePolicy::Fail), random_upload(&dir, "x-PF.csv", 10, 3)).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Permanent);
    assert!(err.message.contains("not the pinned"), "{}", err.chain());
    assert!(sshd.files("PF2").is_empty());
}

#[tokio::test]
async fn a_refused_key_or_password_is_permanent() {
    let sshd = Sshd::start();
    let other = Sshd::start();
    let dir = tempfile::tempdir().expect("dir");
    let mut creds = credentials(&sshd, "PF2");
    creds.private_key = Some(SecretString::from(other.client_key.clone()));
    let err =
        deliver(creds, options(ExistingFilePolicy::Fail), random_upload(&dir, "x-PF.csv", 10, 4)).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Permanent, "{}", err.chain());
    assert!(!err.chain().contains("PRIVATE KEY"), "key material in the error");

    let mut creds = credentials(&sshd, "PF2");
    creds.private_key = None;
    creds.password = Some(SecretString::from("not-the-password"));
    let err =
        deliver(creds, options(ExistingFilePolicy::Fail), random_upload(&dir, "y-PF.csv", 10, 5)).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Permanent, "{}", err.chain());
    assert!(!err.chain().contains("not-the-password"));
    assert!(sshd.files("PF2").is_empty());
}

#[tokio::test]
async fn a_server_that_is_down_is_transient() {
    let dir = tempfile::tempdir().expect("dir");
    let sshd = Sshd::start();
    let mut creds = credentials(&sshd, "PF2");
    creds.port = free_port();
    let err =
        deliver(creds, options(ExistingFilePolicy::Fail), random_upload(&dir, "x-PF.csv", 10, 6)).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Transient, "{}", err.chain());
}

#[tokio::test]
async fn a_connection_cut_mid_upload_leaves_no_final_file_and_the_next_attempt_delivers_exactly_one() {
    let mut sshd = Sshd::start();
    let dir = tempfile::tempdir().expect("dir");
    let upload = random_upload(&dir, "Cut-PF.csv", 256 * 1024 * 1024, 7);
    let creds = credentials(&sshd, "PF2");
    let attempt = tokio::spawn(deliver(creds.clone(), options(ExistingFilePolicy::Fail), upload.clone()));
    // Cut once the temporary file is growing on the server.
    for _ in 0..400 {
        let growing = sshd.all_files("PF2").iter().any(|name| {
            name.starts_with(".Cut-PF.csv.")
                && std::fs::metadata(sshd.folder("PF2").join(name)).map(|m| m.len() > 0).unwrap_or(false)
        });
        if growing {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    sshd.stop();
    let err = attempt.await.expect("task").unwrap_err();
    assert_eq!(err.class, ErrorClass::Transient, "{}", err.chain());
    assert!(!sshd.folder("PF2").join("Cut-PF.csv").exists(), "a partial final file");
    let leftovers = sshd.all_files("PF2");
    assert!(leftovers.iter().all(|n| n.starts_with(".Cut-PF.csv.") && n.ends_with(".part")), "{leftovers:?}");

    sshd.resume();
    let delivery = deliver(creds, options(ExistingFilePolicy::Fail), upload.clone()).await.expect("second attempt");
    assert!(delivery.uploaded);
    assert_eq!(sshd.files("PF2"), ["Cut-PF.csv"]);
    assert_eq!(sha256_of(&sshd.folder("PF2").join("Cut-PF.csv")), upload.sha256);
}

#[tokio::test]
async fn an_existing_file_is_handled_by_the_configured_policy() {
    let sshd = Sshd::start();
    let dir = tempfile::tempdir().expect("dir");
    let creds = credentials(&sshd, "PF2");
    let first = random_upload(&dir, "Same-PF.csv", 5000, 8);
    let mut different = random_upload(&dir, "Other-PF.csv", 5000, 9);
    different.file_name = first.file_name.clone();
    let remote = sshd.folder("PF2").join(&first.file_name);
    deliver(creds.clone(), options(ExistingFilePolicy::Fail), first.clone()).await.expect("first");

    // fail: identical counts as delivered, different is refused and left untouched.
    let again = deliver(creds.clone(), options(ExistingFilePolicy::Fail), first.clone()).await.expect("identical");
    assert_eq!(again, Delivery { remote_path: remote.display().to_string(), uploaded: false });
    let err = deliver(creds.clone(), options(ExistingFilePolicy::Fail), different.clone()).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Permanent);
    assert_eq!(sha256_of(&remote), first.sha256);

    // skip-if-identical: identical skipped, different replaced.
    let skipped =
        deliver(creds.clone(), options(ExistingFilePolicy::SkipIfIdentical), first.clone()).await.expect("skip");
    assert!(!skipped.uploaded);
    let replaced =
        deliver(creds.clone(), options(ExistingFilePolicy::SkipIfIdentical), different.clone()).await.expect("replace");
    assert!(replaced.uploaded);
    assert_eq!(sha256_of(&remote), different.sha256);

    // overwrite: always replaced.
    let overwritten = deliver(creds, options(ExistingFilePolicy::Overwrite), first.clone()).await.expect("overwrite");
    assert!(overwritten.uploaded);
    assert_eq!(sha256_of(&remote), first.sha256);
    assert_eq!(sshd.files("PF2").len(), 1);
}

#[tokio::test]
async fn a_missing_remote_directory_is_permanent_unless_creation_is_configured() {
    let sshd = Sshd::start();
    let dir = tempfile::tempdir().expect("dir");
    let mut creds = credentials(&sshd, "PF2");
    let nested = sshd.folder("PF2").join("new/inbound");
    creds.remote_dir = nested.display().to_string();
    let upload = random_upload(&dir, "Dir-PF.csv", 1000, 10);
    let err = deliver(creds.clone(), options(ExistingFilePolicy::Fail), upload.clone()).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Permanent, "{}", err.chain());
    let create = SftpOptions { create_dir: true, ..options(ExistingFilePolicy::Fail) };
    deliver(creds, create, upload.clone()).await.expect("delivered into the created directory");
    assert_eq!(sha256_of(&nested.join("Dir-PF.csv")), upload.sha256);
}

#[tokio::test]
async fn the_deadline_mid_upload_stops_it_and_removes_the_temporary_from_the_server() {
    let sshd = Sshd::start();
    let dir = tempfile::tempdir().expect("dir");
    let upload = random_upload(&dir, "Late-PF.csv", 512 * 1024 * 1024, 11);
    let deadline = tokio::time::Instant::now() + Duration::from_millis(400);
    let err = deliver_until(credentials(&sshd, "PF2"), options(ExistingFilePolicy::Fail), upload, deadline)
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::Transient, "{}", err.chain());
    assert!(err.message.contains("deadline"), "{}", err.chain());
    assert!(sshd.all_files("PF2").is_empty(), "left on the server: {:?}", sshd.all_files("PF2"));
}
