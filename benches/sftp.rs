//! SFTP upload benchmark (issue 7): a 200 MB file to the same loopback sshd, our delivery
//! (connect, host key check, auth, upload to a temporary, fsync, size check, rename) side by
//! side with OpenSSH's own `sftp -b` (connect, auth, put, rename) — with and without fsync —
//! alternating, 5 rounds.
//! `make bench-sftp`.

#[path = "../tests/it/helpers.rs"]
mod helpers;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use maestro_relay::memory::MemoryStore;
use maestro_relay::ports::FileDrop;
use maestro_relay::secrets::SftpCredentials;
use maestro_relay::sftp::{ExistingFilePolicy, SftpDrop, SftpOptions};
use maestro_relay::worker::delivery::FileDelivery;

/// One delivery as the worker makes it: connect, upload, intent, rename, delivered mark (the
/// records go to memory here: the figure is the SFTP side's).
async fn deliver(credentials: SftpCredentials, options: SftpOptions, upload: &helpers::Upload) -> bool {
    let policy = options.existing;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    let mut folder = SftpDrop { options }.open(credentials, deadline).await.expect("connect");
    let store = MemoryStore::new();
    let file = upload.exported();
    let one = FileDelivery {
        store: &store,
        job_id: "bench",
        file: &file,
        policy,
        attempt: 1,
        deadline,
        trigger: None,
        streamed: None,
    };
    one.run(&mut folder, None).await.expect("delivery").uploaded
}

const SIZE: usize = 200 * 1024 * 1024;
const ROUNDS: usize = 5;

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

#[tokio::main]
async fn main() {
    let sshd = helpers::Sshd::start();
    let dir = tempfile::tempdir().expect("dir");
    let upload = helpers::random_upload(&dir, "Bench-PF.csv", SIZE, 42);
    let credentials: SftpCredentials = serde_json::from_value(sshd.secret("PF2")).expect("credentials");
    let remote = sshd.folder("PF2");
    let key_path = sshd.dir.path().join("client_ed25519");
    // OpenSSH twice: a plain `put`, and `put -f`, which fsyncs on the server as our
    // delivery does — the like-for-like figure.
    let batch = |name: &str, flags: &str| {
        let path = dir.path().join(name);
        let (local, remote) = (upload.local_path.display(), remote.display());
        let script =
            format!("put {flags} {local} {remote}/.{name}.part\nrename {remote}/.{name}.part {remote}/{name}.csv\n");
        std::fs::write(&path, script).expect("batch file");
        path
    };
    let openssh_batches = [batch("openssh-put", ""), batch("openssh-put-fsync", "-f")];
    let mb = SIZE as f64 / 1e6;

    let chunks = [64 * 1024, 256 * 1024, 1024 * 1024, 4 * 1024 * 1024];
    let mut ours: Vec<Vec<f64>> = vec![Vec::new(); chunks.len()];
    let mut openssh: Vec<Vec<f64>> = vec![Vec::new(); openssh_batches.len()];
    for _ in 0..ROUNDS {
        for (i, chunk) in chunks.iter().enumerate() {
            let _ = std::fs::remove_file(remote.join(&upload.file_name));
            let options = SftpOptions {
                write_chunk: *chunk,
                existing: ExistingFilePolicy::Fail,
                io_timeout: Duration::from_secs(60),
                ..SftpOptions::default()
            };
            let started = Instant::now();
            let uploaded = deliver(credentials.clone(), options, &upload).await;
            ours[i].push(mb / started.elapsed().as_secs_f64());
            assert!(uploaded);
        }
        for (i, batch) in openssh_batches.iter().enumerate() {
            for entry in std::fs::read_dir(&remote).expect("remote dir").flatten() {
                if entry.file_name().to_string_lossy().starts_with("openssh-") {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
            let started = Instant::now();
            let status = Command::new("sftp")
                .args(["-q", "-b"])
                .arg(batch)
                .arg("-i")
                .arg(&key_path)
                .args(["-P", &sshd.port.to_string()])
                .args(["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"])
                .arg(format!("{}@127.0.0.1", helpers::whoami()))
                .stdout(Stdio::null())
                .status()
                .expect("sftp");
            assert!(status.success(), "sftp -b failed");
            openssh[i].push(mb / started.elapsed().as_secs_f64());
        }
    }

    let plain = median(openssh[0].clone());
    let reference = median(openssh[1].clone());
    println!("\nSFTP upload of {mb:.0} MB to loopback sshd, end to end, median of {ROUNDS} (MB/s)");
    println!("   {:<50} {:>8}  {:>6}", "", "MB/s", "ratio");
    println!("   {:<50} {:>8.1}  {:>6}", "OpenSSH sftp -b, put -f (fsync, like ours)", reference, "1.00");
    println!("   {:<50} {:>8.1}  {:>6.2}", "OpenSSH sftp -b, put (no fsync)", plain, plain / reference);
    for (chunk, rates) in chunks.iter().zip(ours) {
        let rate = median(rates);
        let name = format!("ours, {} KiB writes (fsync, size check, rename)", chunk / 1024);
        println!("   {name:<50} {rate:>8.1}  {:>6.2}", rate / reference);
    }
}
