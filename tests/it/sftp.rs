//! SFTP delivery against a real OpenSSH sshd on loopback.

use std::time::Duration;

use maestro_relay::delivery::sftp::{SftpDrop, SftpOptions};
use maestro_relay::error::{ErrorClass, Result};
use maestro_relay::job::DeliveryRecord;
use maestro_relay::job::ExistingFilePolicy;
use maestro_relay::job::Replaced;
use maestro_relay::job::{TriggerContent, TriggerFile};
use maestro_relay::ports::FileDrop;
use maestro_relay::ports::RemoteFolder;
use maestro_relay::secrets::SftpCredentials;
use secrecy::SecretString;
use sha2::{Digest, Sha256};

use crate::helpers::{deliver_once, free_port, random_upload, Sshd, TamperingProxy, Upload};

#[derive(Debug, PartialEq, Eq)]
struct Delivery {
    remote_path: String,
    uploaded: bool,
}

/// The whole record of one delivery, for the tests that look past path and upload.
async fn deliver_record(
    credentials: SftpCredentials,
    options: Options,
    upload: Upload,
    trigger: Option<&TriggerFile>,
) -> Result<DeliveryRecord> {
    deliver_once(
        credentials,
        options.sftp,
        options.existing,
        &upload,
        trigger,
        tokio::time::Instant::now() + Duration::from_secs(120),
    )
    .await
}

/// One file's first delivery through the SFTP adapter (no earlier record), until `deadline`.
async fn deliver_until(
    credentials: SftpCredentials,
    options: Options,
    upload: Upload,
    deadline: tokio::time::Instant,
) -> Result<Delivery> {
    let record = deliver_once(credentials, options.sftp, options.existing, &upload, None, deadline).await?;
    Ok(Delivery { remote_path: record.remote_path, uploaded: record.uploaded })
}

async fn deliver(credentials: SftpCredentials, options: Options, upload: Upload) -> Result<Delivery> {
    deliver_until(credentials, options, upload, tokio::time::Instant::now() + Duration::from_secs(120)).await
}

fn credentials(sshd: &Sshd, target: &str) -> SftpCredentials {
    serde_json::from_value(sshd.secret(target)).expect("credentials")
}

/// The adapter's options, and the existing-file policy the worker passes to the delivery.
#[derive(Clone)]
struct Options {
    sftp: SftpOptions,
    existing: ExistingFilePolicy,
}

fn options(existing: ExistingFilePolicy) -> Options {
    let sftp = SftpOptions {
        connect_timeout: Duration::from_secs(5),
        io_timeout: Duration::from_secs(20),
        ..SftpOptions::default()
    };
    Options { sftp, existing }
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

/// The SFTP cipher runs on OpenSSL in the vendored libssh2 (vendor/libssh2-sys/PATCHES.md).
#[test]
fn chacha20_poly1305_runs_on_openssl_not_the_portable_fallback() {
    extern "C" {
        fn libssh2_chachapoly_uses_libcrypto() -> std::os::raw::c_int;
    }
    // SAFETY: takes nothing, touches only a context of its own.
    assert_eq!(unsafe { libssh2_chachapoly_uses_libcrypto() }, 1);
}

/// An sshd that speaks only chacha20-poly1305 checks every tag we write, and we check its;
/// rekeying every 256 KiB drops and builds the cipher contexts hundreds of times mid-session.
#[tokio::test]
async fn chacha20_poly1305_carries_a_file_both_ways_byte_for_byte_across_rekeys() {
    let sshd =
        Sshd::start_configured(|config| format!("Ciphers chacha20-poly1305@openssh.com\nRekeyLimit 256K\n{config}"));
    let dir = tempfile::tempdir().expect("dir");
    let upload = random_upload(&dir, "Chacha-PF.csv", 3 * 1024 * 1024 + 17, 11);
    deliver(credentials(&sshd, "PF2"), options(ExistingFilePolicy::Fail), upload.clone()).await.expect("delivered");
    assert_eq!(sha256_of(&sshd.folder("PF2").join("Chacha-PF.csv")), upload.sha256);

    let read_back = read_over_sftp(&sshd, "PF2", "Chacha-PF.csv");
    assert_eq!(hex::encode(Sha256::digest(&read_back)), upload.sha256);
}

/// Reads a delivered file back through the server's own SFTP, in the server's large packets.
fn read_over_sftp(sshd: &Sshd, target: &str, name: &str) -> Vec<u8> {
    use std::io::Read;
    let creds = credentials(sshd, target);
    let key = tempfile::NamedTempFile::new().expect("key file");
    std::fs::write(key.path(), &sshd.client_key).expect("key");
    let tcp = std::net::TcpStream::connect(("127.0.0.1", sshd.port)).expect("connect");
    let mut session = ssh2::Session::new().expect("session");
    session.set_tcp_stream(tcp);
    session.handshake().expect("handshake");
    session.userauth_pubkey_file(&creds.username, None, key.path(), None).expect("authenticated");
    let sftp = session.sftp().expect("sftp");
    let mut file = sftp.open(std::path::Path::new(&creds.remote_dir).join(name)).expect("remote file");
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).expect("read back");
    bytes
}

#[tokio::test]
async fn one_flipped_bit_in_an_encrypted_packet_from_the_server_is_refused_by_its_tag() {
    let sshd = Sshd::start_configured(|config| format!("Ciphers chacha20-poly1305@openssh.com\n{config}"));
    let dir = tempfile::tempdir().expect("dir");
    let upload = random_upload(&dir, "Flip-PF.csv", 10_000, 12);

    let mut through_relay = credentials(&sshd, "PF2");
    through_relay.port = TamperingProxy::start(sshd.port, None).port;
    let control = deliver(through_relay, options(ExistingFilePolicy::Fail), upload.clone()).await;
    assert!(control.is_ok(), "the relay alone must not break a delivery: {:?}", control.err().map(|e| e.chain()));

    let flipped = random_upload(&dir, "Flipped-PF.csv", 10_000, 13);
    let mut tampered = credentials(&sshd, "PF2");
    // 40 bytes in: past the length field, inside the first packet's payload.
    tampered.port = TamperingProxy::start(sshd.port, Some(40)).port;
    let err = deliver(tampered, options(ExistingFilePolicy::Fail), flipped).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Transient, "{}", err.chain());
    // LIBSSH2_ERROR_DECRYPT: the packet's tag did not match.
    assert!(err.chain().contains("[Session(-12)]"), "{}", err.chain());
    assert!(!sshd.folder("PF2").join("Flipped-PF.csv").exists());
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
    assert!(err.message.contains("none of the pinned"), "{}", err.chain());
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
    let fail = options(ExistingFilePolicy::Fail);
    let create = Options { sftp: SftpOptions { create_dir: true, ..fail.sftp.clone() }, ..fail };
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

/// Polls `path` as fast as it can until told to stop: how many looks, how many found no
/// file, and the sizes it saw that are not one of `complete`.
fn poll_reader(
    path: std::path::PathBuf,
    complete: Vec<u64>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<(u64, u64, Vec<u64>)> {
    std::thread::spawn(move || {
        let (mut looks, mut missing, mut short) = (0u64, 0u64, Vec::new());
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            looks += 1;
            match std::fs::metadata(&path) {
                Ok(meta) if complete.contains(&meta.len()) => {}
                Ok(meta) => short.push(meta.len()),
                Err(_) => missing += 1,
            }
        }
        (looks, missing, short)
    })
}

#[tokio::test]
async fn overwrite_replaces_in_one_step_so_a_reader_polling_the_folder_never_sees_the_file_missing_or_short() {
    let sshd = Sshd::start();
    let dir = tempfile::tempdir().expect("dir");
    let creds = credentials(&sshd, "PF2");
    let a = random_upload(&dir, "Plan-PF.csv", 3_000_000, 20);
    let mut b = random_upload(&dir, "Plan-PF-b.csv", 4_000_000, 21);
    b.file_name = a.file_name.clone();
    deliver(creds.clone(), options(ExistingFilePolicy::Fail), a.clone()).await.expect("first");
    let remote = sshd.folder("PF2").join(&a.file_name);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = poll_reader(remote.clone(), vec![a.bytes, b.bytes], std::sync::Arc::clone(&stop));
    for (round, policy) in
        [ExistingFilePolicy::Overwrite, ExistingFilePolicy::SkipIfIdentical].into_iter().cycle().take(6).enumerate()
    {
        let upload = if round % 2 == 0 { b.clone() } else { a.clone() };
        let record = deliver_record(creds.clone(), options(policy), upload.clone(), None).await.expect("replaced");
        assert_eq!(record.replaced, Some(Replaced::Atomically), "round {round}");
        assert_eq!(record.remote_size, Some(upload.bytes));
        assert_eq!(sha256_of(&remote), upload.sha256);
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (looks, missing, short) = reader.join().expect("reader");
    assert!(looks > 1000, "the reader looked only {looks} times");
    assert_eq!((missing, short), (0, vec![]), "in {looks} looks");
    assert_eq!(sshd.files("PF2"), std::slice::from_ref(&a.file_name));
}

#[tokio::test]
async fn a_server_without_posix_rename_gets_remove_then_rename_and_the_record_says_so() {
    let sshd = Sshd::start_configured(|config| {
        config.replace("Subsystem sftp internal-sftp", "Subsystem sftp internal-sftp -P posix-rename")
    });
    let dir = tempfile::tempdir().expect("dir");
    let creds = credentials(&sshd, "PF2");
    let a = random_upload(&dir, "Old-PF.csv", 100_000, 22);
    let mut b = random_upload(&dir, "New-PF.csv", 120_000, 23);
    b.file_name = a.file_name.clone();
    deliver(creds.clone(), options(ExistingFilePolicy::Fail), a.clone()).await.expect("first");
    let record = deliver_record(creds, options(ExistingFilePolicy::Overwrite), b.clone(), None).await.expect("second");
    assert_eq!(record.replaced, Some(Replaced::RemovedFirst));
    assert_eq!(sha256_of(&sshd.folder("PF2").join(&a.file_name)), b.sha256);
    assert_eq!(sshd.files("PF2"), std::slice::from_ref(&a.file_name));
}

#[tokio::test]
async fn a_server_allowing_one_channel_per_connection_gets_remove_then_rename_not_a_failure() {
    // The atomic replace needs a second SFTP channel, which `MaxSessions 1` refuses.
    let sshd = Sshd::start_configured(|config| format!("MaxSessions 1\n{config}"));
    let dir = tempfile::tempdir().expect("dir");
    let creds = credentials(&sshd, "PF2");
    let a = random_upload(&dir, "Old-PF.csv", 100_000, 32);
    let mut b = random_upload(&dir, "New-PF.csv", 120_000, 33);
    b.file_name = a.file_name.clone();
    deliver(creds.clone(), options(ExistingFilePolicy::Fail), a.clone()).await.expect("first");
    let record = deliver_record(creds, options(ExistingFilePolicy::Overwrite), b.clone(), None)
        .await
        .expect("replaced although no second channel opens");
    assert_eq!(record.replaced, Some(Replaced::RemovedFirst));
    assert_eq!(sha256_of(&sshd.folder("PF2").join(&a.file_name)), b.sha256);
}

#[tokio::test]
async fn the_trigger_appears_only_after_the_complete_data_file_and_sha256sum_accepts_it() {
    let sshd = Sshd::start();
    let dir = tempfile::tempdir().expect("dir");
    let upload = random_upload(&dir, "Orders-PF_20261124060007.csv", 8_000_000, 24);
    let trigger = TriggerFile::parse("sha256", None, ExistingFilePolicy::Overwrite).expect("spec").expect("a trigger");
    let folder = sshd.folder("PF2");
    let (data, trigger_path) = (folder.join(&upload.file_name), folder.join(format!("{}.sha256", upload.file_name)));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // A watcher of the folder, as SAP's inbound job: whenever it sees the trigger, the
    // data file must already be there, whole.
    let watcher = {
        let (stop, size) = (std::sync::Arc::clone(&stop), upload.bytes);
        std::thread::spawn(move || {
            let (mut triggers_seen, mut data_seen, mut early) = (0u64, 0u64, 0u64);
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let trigger_there = trigger_path.exists();
                let data_size = std::fs::metadata(&data).map(|m| m.len()).ok();
                data_seen += u64::from(data_size.is_some());
                if trigger_there {
                    triggers_seen += 1;
                    early += u64::from(data_size != Some(size));
                }
            }
            (triggers_seen, data_seen, early)
        })
    };
    let record =
        deliver_record(credentials(&sshd, "PF2"), options(ExistingFilePolicy::Fail), upload.clone(), Some(&trigger))
            .await
            .expect("delivered");
    tokio::time::sleep(Duration::from_millis(50)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (triggers_seen, data_seen, early) = watcher.join().expect("watcher");
    assert!(triggers_seen > 0 && data_seen > triggers_seen, "seen: trigger {triggers_seen}, data {data_seen}");
    assert_eq!(early, 0, "the trigger was seen before the complete data file");
    let written = record.trigger.expect("trigger record");
    assert!(written.written && written.uploaded);
    assert_eq!(sshd.files("PF2"), [upload.file_name.clone(), format!("{}.sha256", upload.file_name)]);
    let check = std::process::Command::new("sha256sum")
        .args(["-c", &format!("{}.sha256", upload.file_name)])
        .current_dir(&folder)
        .output()
        .expect("sha256sum");
    assert!(check.status.success(), "sha256sum -c: {}", String::from_utf8_lossy(&check.stdout));

    // An empty `.done` by template, on a name without `.csv`.
    let done = TriggerFile::parse("{stem}.done", Some(TriggerContent::Empty), ExistingFilePolicy::Fail)
        .expect("spec")
        .expect("a trigger");
    let other = random_upload(&dir, "Stock-PF_20261124060007.csv", 1000, 25);
    deliver_record(credentials(&sshd, "PF2"), options(ExistingFilePolicy::Fail), other, Some(&done))
        .await
        .expect("second");
    assert_eq!(std::fs::read(folder.join("Stock-PF_20261124060007.done")).expect("the .done"), b"");
}

fn fingerprint_of(public_key: &std::path::Path) -> String {
    let out = std::process::Command::new("ssh-keygen")
        .args(["-l", "-E", "sha256", "-f"])
        .arg(public_key)
        .output()
        .expect("ssh-keygen");
    String::from_utf8_lossy(&out.stdout).split_whitespace().nth(1).expect("a fingerprint").to_owned()
}

#[tokio::test]
async fn during_a_host_key_rotation_any_pinned_fingerprint_is_accepted_and_none_of_them_is_refused() {
    let sshd = Sshd::start();
    let dir = tempfile::tempdir().expect("dir");
    let old = "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let mut secret = sshd.secret("PF2");
    secret["host_key_sha256"] = serde_json::json!([old, sshd.fingerprint]);
    let creds: SftpCredentials = serde_json::from_value(secret.clone()).expect("a list of pins");
    deliver(creds, options(ExistingFilePolicy::Fail), random_upload(&dir, "a-PF.csv", 10, 30)).await.expect("list");
    secret["host_key_sha256"] = serde_json::json!(format!("{old}, {}", sshd.fingerprint));
    let creds: SftpCredentials = serde_json::from_value(secret.clone()).expect("pins in one string");
    deliver(creds, options(ExistingFilePolicy::Fail), random_upload(&dir, "b-PF.csv", 10, 31)).await.expect("string");

    secret["host_key_sha256"] = serde_json::json!([old, "SHA256:BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB"]);
    let creds: SftpCredentials = serde_json::from_value(secret).expect("pins");
    let err =
        deliver(creds, options(ExistingFilePolicy::Fail), random_upload(&dir, "c-PF.csv", 10, 32)).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Permanent);
    assert!(err.message.contains("(ed25519,") && err.message.contains("BBBB"), "{}", err.chain());
    assert_eq!(sshd.files("PF2"), ["a-PF.csv", "b-PF.csv"]);
}

/// A config edit that gives the rig's sshd an RSA host key: in place of its ed25519 one, or
/// beside it.
fn with_rsa_host_key(config: String, only: bool) -> String {
    let dir = config
        .lines()
        .find_map(|l| l.strip_prefix("HostKey "))
        .and_then(|k| k.strip_suffix("/host_ed25519"))
        .expect("the HostKey line")
        .to_owned();
    let status = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "rsa", "-b", "3072", "-N", "", "-f"])
        .arg(format!("{dir}/host_rsa"))
        .status()
        .expect("ssh-keygen");
    assert!(status.success());
    let ed25519 = format!("HostKey {dir}/host_ed25519");
    let rsa = format!("HostKey {dir}/host_rsa");
    if only {
        // No SHA-1 `ssh-rsa`: a server that takes only RSA-SHA2 signatures.
        config.replace(&ed25519, &rsa) + "HostKeyAlgorithms rsa-sha2-512,rsa-sha2-256\n"
    } else {
        // RSA first on the server's side: the client's order decides all the same.
        config.replace(&ed25519, &format!("{rsa}\n{ed25519}"))
            + "HostKeyAlgorithms rsa-sha2-512,rsa-sha2-256,ssh-ed25519\n"
    }
}

#[tokio::test]
async fn with_both_an_ed25519_and_an_rsa_host_key_the_ed25519_key_is_the_one_checked() {
    let sshd = Sshd::start_configured(|config| with_rsa_host_key(config, false));
    let dir = tempfile::tempdir().expect("dir");
    let mut creds = credentials(&sshd, "PF2");
    deliver(creds.clone(), options(ExistingFilePolicy::Fail), random_upload(&dir, "e-PF.csv", 10, 35))
        .await
        .expect("the ed25519 pin");
    creds.host_key_sha256 = fingerprint_of(&sshd.dir.path().join("host_rsa.pub")).as_str().into();
    let err =
        deliver(creds, options(ExistingFilePolicy::Fail), random_upload(&dir, "r-PF.csv", 10, 36)).await.unwrap_err();
    assert!(err.message.contains("(ed25519,"), "{}", err.chain());
}

#[tokio::test]
async fn a_server_offering_only_sha1_ssh_rsa_host_keys_is_refused_with_a_message_that_says_so() {
    let sshd =
        Sshd::start_configured(|config| format!("HostKeyAlgorithms ssh-rsa\n{}", with_rsa_host_key(config, true)));
    let dir = tempfile::tempdir().expect("dir");
    let mut creds = credentials(&sshd, "PF2");
    creds.host_key_sha256 = fingerprint_of(&sshd.dir.path().join("host_rsa.pub")).as_str().into();
    let err = deliver(creds, options(ExistingFilePolicy::Fail), random_upload(&dir, "Sha1-PF.csv", 10, 35))
        .await
        .unwrap_err();
    assert!(err.message.contains("ssh-rsa with SHA-1"), "{}", err.chain());
    assert!(sshd.files("PF2").is_empty());
}

#[tokio::test]
async fn a_server_with_only_an_rsa_host_key_is_reached_with_rsa_sha2_signatures() {
    let sshd = Sshd::start_configured(|config| with_rsa_host_key(config, true));
    let dir = tempfile::tempdir().expect("dir");
    let mut creds = credentials(&sshd, "PF2");
    let rsa = fingerprint_of(&sshd.dir.path().join("host_rsa.pub"));
    creds.host_key_sha256 = rsa.as_str().into();
    let upload = random_upload(&dir, "Rsa-PF.csv", 5000, 33);
    deliver(creds.clone(), options(ExistingFilePolicy::Fail), upload.clone()).await.expect("delivered over RSA-SHA2");
    assert_eq!(sha256_of(&sshd.folder("PF2").join("Rsa-PF.csv")), upload.sha256);
    // The ed25519 pin of the same rig no longer matches: the key checked is the RSA one.
    creds.host_key_sha256 = sshd.fingerprint.as_str().into();
    let err =
        deliver(creds, options(ExistingFilePolicy::Fail), random_upload(&dir, "x-PF.csv", 10, 34)).await.unwrap_err();
    assert!(err.message.contains("(rsa,"), "{}", err.chain());
}

/// The password rig (`keyboard_interactive`: the only method it offers) and credentials of
/// its throwaway user with the right password and no key.
fn password_rig(keyboard_interactive: bool) -> (Sshd, maestro_relay::secrets::SftpCredentials) {
    let (sshd, user) = Sshd::with_password_user("correct horse battery", keyboard_interactive);
    let mut creds = credentials(&sshd, "PF2");
    creds.username = user;
    creds.private_key = None;
    creds.password = Some(SecretString::from("correct horse battery"));
    (sshd, creds)
}

#[tokio::test]
async fn a_password_is_accepted_by_a_server_that_takes_passwords_and_a_wrong_one_refused_as_wrong() {
    let (sshd, mut creds) = password_rig(false);
    let dir = tempfile::tempdir().expect("dir");
    deliver(creds.clone(), options(ExistingFilePolicy::Fail), random_upload(&dir, "pw-PF.csv", 100, 40))
        .await
        .expect("delivered with the password");
    assert_eq!(sshd.files("PF2"), ["pw-PF.csv"]);

    creds.password = Some(SecretString::from("correct horse staple"));
    let err =
        deliver(creds, options(ExistingFilePolicy::Fail), random_upload(&dir, "no-PF.csv", 100, 41)).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Permanent, "{}", err.chain());
    // Offered and tried: refused because the password is wrong.
    assert!(err.message.contains("refused the password of relay-pw"), "{}", err.chain());
    assert!(!err.chain().contains("staple"), "the password in the error");
    assert_eq!(sshd.files("PF2"), ["pw-PF.csv"]);
}

#[tokio::test]
async fn a_password_is_accepted_by_keyboard_interactive_where_that_is_all_the_server_offers() {
    let (sshd, mut creds) = password_rig(true);
    let dir = tempfile::tempdir().expect("dir");
    deliver(creds.clone(), options(ExistingFilePolicy::Fail), random_upload(&dir, "kbd-PF.csv", 100, 42))
        .await
        .expect("delivered by keyboard-interactive");
    assert_eq!(sshd.files("PF2"), ["kbd-PF.csv"]);

    creds.password = Some(SecretString::from("correct horse staple"));
    let err =
        deliver(creds, options(ExistingFilePolicy::Fail), random_upload(&dir, "no-PF.csv", 100, 43)).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Permanent, "{}", err.chain());
    assert!(err.message.contains("keyboard-interactive, 1 prompts answered"), "{}", err.chain());
    assert!(!err.chain().contains("staple"));
}

// ------------------------------------------------------------ the streamed temporary

/// `bytes` sent on a channel of the export's depth in chunks of `chunk` (the last shorter),
/// the sender dropped after the last; yields now and then so the writer also meets an empty
/// channel with bytes in flight.
fn send_in_chunks(bytes: bytes::Bytes, chunk: usize) -> tokio::sync::mpsc::Receiver<bytes::Bytes> {
    let (sender, receiver) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        let mut offset = 0;
        let mut sends = 0u32;
        while offset < bytes.len() {
            let end = (offset + chunk).min(bytes.len());
            if sender.send(bytes.slice(offset..end)).await.is_err() {
                return;
            }
            offset = end;
            sends += 1;
            if sends % 7 == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    });
    receiver
}

fn random_bytes(size: usize, seed: u64) -> bytes::Bytes {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut bytes = vec![0u8; size];
    rng.fill(&mut bytes);
    bytes.into()
}

/// A window of 64 KiB: below the writer's floor of one refill (eight 30,000-byte requests,
/// 240,000 bytes), so the window is exactly one refill.
fn small_window() -> SftpOptions {
    SftpOptions { write_chunk: 64 * 1024, ..options(ExistingFilePolicy::Fail).sftp }
}

#[tokio::test]
async fn a_streamed_temporary_is_byte_identical_to_the_stream_for_chunks_smaller_than_equal_to_and_larger_than_the_window(
) {
    let sshd = Sshd::start();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    // The floor (a window of one refill), a window of two and a half refills, which is
    // topped up while bytes are in flight and moved with them, and the default.
    let windows = [64 * 1024, 600_000, SftpOptions::default().write_chunk];
    // An odd total, so the last chunk and the last refill are short.
    let bytes = random_bytes(3 * 1024 * 1024 + 12_345, 21);
    for window in windows {
        let options = SftpOptions { write_chunk: window, ..options(ExistingFilePolicy::Fail).sftp };
        let mut folder = SftpDrop { options }.open(credentials(&sshd, "PF2"), deadline).await.expect("open");
        for chunk in [1024, 100_003, 240_000, 256 * 1024, 600_000, 1024 * 1024] {
            let name = format!(".stream-{window}-{chunk}.part");
            let sent = folder.upload_stream(send_in_chunks(bytes.clone(), chunk), &name, deadline).await;
            assert_eq!(sent.expect("streamed"), bytes.len() as u64, "window {window}, chunks of {chunk}");
            let written = std::fs::read(sshd.folder("PF2").join(&name)).expect("temporary");
            assert!(
                written == bytes[..],
                "window {window}, chunks of {chunk}: the {} bytes on the server differ from the stream",
                written.len()
            );
        }
    }
}

#[tokio::test]
async fn an_empty_stream_leaves_an_empty_temporary_and_says_zero_bytes() {
    let sshd = Sshd::start();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut folder =
        SftpDrop { options: small_window() }.open(credentials(&sshd, "PF2"), deadline).await.expect("open");
    let sent = folder.upload_stream(send_in_chunks(bytes::Bytes::new(), 1024), ".empty.part", deadline).await;
    assert_eq!(sent.expect("streamed"), 0);
    assert_eq!(std::fs::metadata(sshd.folder("PF2").join(".empty.part")).expect("temporary").len(), 0);
}

#[tokio::test]
async fn a_stream_that_ends_early_leaves_exactly_the_bytes_sent_before_it_ended() {
    let sshd = Sshd::start();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut folder =
        SftpDrop { options: small_window() }.open(credentials(&sshd, "PF2"), deadline).await.expect("open");
    let bytes = random_bytes(2 * 1024 * 1024, 22);
    // The export stops after 700,001 of its bytes (a failed page): the sender is dropped
    // with chunks still queued and the window partly full.
    let (sender, receiver) = tokio::sync::mpsc::channel(16);
    let export = tokio::spawn(async move {
        for offset in (0..700_001).step_by(100_000) {
            let end = (offset + 100_000).min(700_001);
            sender.send(bytes.slice(offset..end)).await.expect("the writer takes the chunk");
        }
        bytes.slice(..700_001)
    });
    let sent = folder.upload_stream(receiver, ".short.part", deadline).await.expect("the stream ended");
    let expected = export.await.expect("export");
    assert_eq!(sent, 700_001);
    assert!(std::fs::read(sshd.folder("PF2").join(".short.part")).expect("temporary") == expected[..]);
}

#[tokio::test]
async fn the_deadline_reached_while_waiting_for_chunks_stops_the_stream_removes_the_temporary_and_closes_the_channel() {
    let sshd = Sshd::start();
    let opened_until = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut folder =
        SftpDrop { options: small_window() }.open(credentials(&sshd, "PF2"), opened_until).await.expect("open");
    let (sender, receiver) = tokio::sync::mpsc::channel(16);
    sender.send(random_bytes(300_000, 23)).await.expect("queued");
    // The sender stays open and silent: only the deadline can end the wait.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(1500);
    let upload = folder.upload_stream(receiver, ".waiting.part", deadline);
    let err = tokio::time::timeout(Duration::from_secs(30), upload)
        .await
        .expect("the writer gave up at the deadline, not never")
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::Transient, "{}", err.chain());
    assert!(err.message.contains("deadline was reached after 300000 bytes of"), "{}", err.chain());
    assert!(sender.is_closed(), "the export still sees the stream open");
    assert!(sshd.all_files("PF2").is_empty(), "left on the server: {:?}", sshd.all_files("PF2"));
}
