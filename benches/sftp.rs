//! SFTP upload benchmark (issues 7 and 14): our delivery (connect, host key check, auth,
//! upload to a temporary, fsync, size check, rename) side by side with OpenSSH's own
//! `sftp -b` (connect, auth, put, rename), alternating, min / median / max of the rounds:
//! 1. a 200 MB file to a loopback sshd, writes of 64 KiB to 4 MiB, `put` with and without
//!    fsync;
//! 2. a 64 MB file at a distance: through a relay on loopback that delays each direction
//!    by half the round trip (no bandwidth limit), at 25 and 50 ms RTT;
//! 3. the write loop alone (ssh2 directly, upload only): 1 MiB handed to libssh2 and
//!    drained before the next (the loop before issue 14) against the window kept topped
//!    up (the loop now), at 0 and 50 ms RTT;
//! 4. the streamed temporary (the export's path): the 64 MB file's bytes handed to
//!    `upload_stream` in the export's 256 KiB chunks on a channel of its depth, then the
//!    rename, beside our delivery from the file and OpenSSH, at 0, 25 and 50 ms RTT.
//!
//! `make bench-sftp`; `-- --write-loop` runs section 3 alone, `-- --stream` section 4 alone.

#[path = "../tests/it/helpers.rs"]
mod helpers;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use maestro_relay::delivery::sftp::{SftpDrop, SftpOptions};
use maestro_relay::job::ExistingFilePolicy;
use maestro_relay::ports::{FileDrop, RemoteFolder};
use maestro_relay::secrets::SftpCredentials;
use maestro_relay::worker::stream::StreamOptions;

/// One delivery as the worker makes it: connect, upload, intent, rename, delivered mark (the
/// records go to memory here: the figure is the SFTP side's).
async fn deliver(credentials: SftpCredentials, options: SftpOptions, upload: &helpers::Upload) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    helpers::deliver_once(credentials, options, ExistingFilePolicy::Fail, upload, None, deadline)
        .await
        .expect("delivery")
        .uploaded
}

/// A TCP relay on loopback to `upstream` that holds every byte for `one_way` in each
/// direction before passing it on, reading as fast as it comes: a server at a distance,
/// with the distance's latency and no bandwidth limit. Threads, one reader and one writer
/// per direction; they end with the connection; the listener lives as long as the process.
struct LatencyRelay {
    port: u16,
}

impl LatencyRelay {
    fn start(upstream: u16, rtt: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("relay listener");
        let port = listener.local_addr().expect("relay address").port();
        let one_way = rtt / 2;
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else { continue };
                for stream in [&client, &server] {
                    let _ = stream.set_nodelay(true);
                }
                let (Ok(client_in), Ok(server_in)) = (client.try_clone(), server.try_clone()) else { continue };
                std::thread::spawn(move || relay(client_in, server, one_way));
                std::thread::spawn(move || relay(server_in, client, one_way));
            }
        });
        Self { port }
    }
}

/// One direction: what is read at t is written at t + `delay`, in order.
fn relay(mut from: TcpStream, mut to: TcpStream, delay: Duration) {
    let (sender, receiver) = mpsc::channel::<(Instant, Vec<u8>)>();
    let writer = std::thread::spawn(move || {
        for (read_at, bytes) in receiver {
            let due = read_at + delay;
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if to.write_all(&bytes).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
    let mut buffer = vec![0u8; 256 * 1024];
    loop {
        match from.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if sender.send((Instant::now(), buffer[..n].to_vec())).is_err() {
                    break;
                }
            }
        }
    }
    drop(sender);
    let _ = writer.join();
}

const ROUNDS: usize = 5;

fn summary(values: &[f64]) -> (f64, f64, f64) {
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    (sorted[0], sorted[sorted.len() / 2], sorted[sorted.len() - 1])
}

/// OpenSSH's `sftp -b` on a batch file, to `port`; seconds.
fn openssh(batch: &Path, key: &Path, port: u16) -> f64 {
    let started = Instant::now();
    let status = Command::new("sftp")
        .args(["-q", "-b"])
        .arg(batch)
        .arg("-i")
        .arg(key)
        .args(["-P", &port.to_string()])
        .args(["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"])
        .arg(format!("{}@127.0.0.1", helpers::whoami()))
        .stdout(Stdio::null())
        .status()
        .expect("sftp");
    assert!(status.success(), "sftp -b failed");
    started.elapsed().as_secs_f64()
}

fn clear(remote: &Path) {
    for entry in std::fs::read_dir(remote).expect("remote dir").flatten() {
        let _ = std::fs::remove_file(entry.path());
    }
}

/// A batch for OpenSSH: `put` (with `flags`) to a temporary, then the rename.
fn batch(dir: &Path, name: &str, flags: &str, local: &Path, remote: &Path) -> PathBuf {
    let path = dir.join(name);
    let (local, remote) = (local.display(), remote.display());
    let script =
        format!("put {flags} {local} {remote}/.{name}.part\nrename {remote}/.{name}.part {remote}/{name}.csv\n");
    std::fs::write(&path, script).expect("batch file");
    path
}

/// Ours with each window beside OpenSSH's batches, alternating, `ROUNDS` rounds, to
/// `port`. Rates in MB/s: (ours per window, OpenSSH per batch).
async fn measure(
    sshd: &helpers::Sshd,
    port: u16,
    upload: &helpers::Upload,
    windows: &[usize],
    batches: &[PathBuf],
) -> (Vec<Vec<f64>>, Vec<Vec<f64>>) {
    let mut credentials: SftpCredentials = serde_json::from_value(sshd.secret("PF2")).expect("credentials");
    credentials.port = port;
    let remote = sshd.folder("PF2");
    let key_path = sshd.dir.path().join("client_ed25519");
    let mb = upload.bytes as f64 / 1e6;
    let mut ours: Vec<Vec<f64>> = vec![Vec::new(); windows.len()];
    let mut theirs: Vec<Vec<f64>> = vec![Vec::new(); batches.len()];
    for _ in 0..ROUNDS {
        for (i, window) in windows.iter().enumerate() {
            clear(&remote);
            let options =
                SftpOptions { write_chunk: *window, io_timeout: Duration::from_secs(60), ..SftpOptions::default() };
            let started = Instant::now();
            let uploaded = deliver(credentials.clone(), options, upload).await;
            ours[i].push(mb / started.elapsed().as_secs_f64());
            assert!(uploaded);
        }
        for (i, batch) in batches.iter().enumerate() {
            clear(&remote);
            theirs[i].push(mb / openssh(batch, &key_path, port));
        }
    }
    (ours, theirs)
}

/// Uploads `local` to `remote` over a fresh ssh2 session on `port`; MB/s of the upload
/// alone. `topped_up`: the window is refilled as it is acknowledged (as src/sftp.rs does);
/// otherwise each 1 MiB buffer is handed back until all of it is acknowledged.
fn raw_upload(sshd: &helpers::Sshd, port: u16, local: &Path, remote: &Path, window: usize, topped_up: bool) -> f64 {
    let tcp = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let mut session = ssh2::Session::new().expect("session");
    session.set_tcp_stream(tcp);
    session.handshake().expect("handshake");
    session.userauth_pubkey_memory(&helpers::whoami(), None, &sshd.client_key, None).expect("auth");
    let sftp = session.sftp().expect("sftp");
    let mut file = std::fs::File::open(local).expect("local");
    let mut out = sftp.create(remote).expect("create");
    const REFILL: usize = 8 * 30_000;
    let started = Instant::now();
    let mut total = 0usize;
    if topped_up {
        let mut buffer = vec![0u8; window + REFILL];
        let (mut head, mut tail, mut eof) = (0, 0, false);
        loop {
            if !eof && tail - head + REFILL <= window {
                if tail + REFILL > buffer.len() {
                    buffer.copy_within(head..tail, 0);
                    (head, tail) = (0, tail - head);
                }
                let n = read_full(&mut file, &mut buffer[tail..tail + REFILL]);
                eof = n < REFILL;
                tail += n;
                continue;
            }
            if head == tail {
                break;
            }
            let acknowledged = out.write(&buffer[head..tail]).expect("write");
            head += acknowledged;
            total += acknowledged;
        }
    } else {
        let mut buffer = vec![0u8; window];
        loop {
            let n = read_full(&mut file, &mut buffer);
            if n == 0 {
                break;
            }
            out.write_all(&buffer[..n]).expect("write");
            total += n;
        }
    }
    drop(out);
    total as f64 / 1e6 / started.elapsed().as_secs_f64()
}

fn read_full(file: &mut std::fs::File, buffer: &mut [u8]) -> usize {
    let mut filled = 0;
    while filled < buffer.len() {
        match file.read(&mut buffer[filled..]).expect("read") {
            0 => break,
            n => filled += n,
        }
    }
    filled
}

fn line(name: &str, rates: &[f64], reference: f64) {
    let (low, mid, high) = summary(rates);
    println!("   {name:<52} {low:>7.1} {mid:>7.1} {high:>7.1}  {:>6.2}", mid / reference);
}

fn header() {
    println!("   {:<52} {:>7} {:>7} {:>7}  {:>6}", "MB/s", "min", "median", "max", "ratio");
}

/// Sections 1 and 2: the delivery end to end on loopback and at a distance.
async fn loopback_and_distance(sshd: &helpers::Sshd, dir: &tempfile::TempDir, remote: &Path) {
    // 1. Loopback.
    let upload = helpers::random_upload(dir, "Bench-PF.csv", 200 * 1024 * 1024, 42);
    // OpenSSH twice: a plain `put`, and `put -f`, which fsyncs on the server as our
    // delivery does — the like-for-like figure.
    let batches = [
        batch(dir.path(), "openssh-put-fsync", "-f", &upload.local_path, remote),
        batch(dir.path(), "openssh-put", "", &upload.local_path, remote),
    ];
    let windows = [64 * 1024, 256 * 1024, 1024 * 1024, 2 * 1024 * 1024, 4 * 1024 * 1024];
    let (ours, theirs) = measure(sshd, sshd.port, &upload, &windows, &batches).await;
    let reference = summary(&theirs[0]).1;
    println!(
        "\n1. SFTP upload of {:.0} MB to loopback sshd, end to end, {ROUNDS} rounds alternating",
        upload.bytes as f64 / 1e6
    );
    header();
    line("OpenSSH sftp -b, put -f (fsync, like ours)", &theirs[0], reference);
    line("OpenSSH sftp -b, put (no fsync)", &theirs[1], reference);
    for (window, rates) in windows.iter().zip(&ours) {
        line(&format!("ours, {} KiB in flight (fsync, size check, rename)", window / 1024), rates, reference);
    }

    // 2. At a distance.
    let upload = helpers::random_upload(dir, "Bench-WAN.csv", 64 * 1024 * 1024, 43);
    let batches = [batch(dir.path(), "openssh-wan-put-fsync", "-f", &upload.local_path, remote)];
    let windows = [1024 * 1024, 2 * 1024 * 1024, 4 * 1024 * 1024, 8 * 1024 * 1024];
    for rtt_ms in [25u64, 50] {
        let relay = LatencyRelay::start(sshd.port, Duration::from_millis(rtt_ms));
        let (ours, theirs) = measure(sshd, relay.port, &upload, &windows, &batches).await;
        let reference = summary(&theirs[0]).1;
        println!(
            "\n2. SFTP upload of {:.0} MB at {rtt_ms} ms RTT (relay on loopback, no bandwidth limit), end to end, \
             {ROUNDS} rounds alternating",
            upload.bytes as f64 / 1e6
        );
        header();
        line("OpenSSH sftp -b, put -f (64 requests of 32 KiB)", &theirs[0], reference);
        for (window, rates) in windows.iter().zip(&ours) {
            line(&format!("ours, {} KiB in flight", window / 1024), rates, reference);
        }
    }
}

/// The export's path: connect, `bytes` handed on in the export's chunks on a channel of its
/// depth as fast as the writer takes them (an export that never waits on Kinaxis) while the
/// temporary is written, then the rename. MB/s.
async fn streamed(credentials: SftpCredentials, bytes: &bytes::Bytes) -> f64 {
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    let options = SftpOptions { io_timeout: Duration::from_secs(60), ..SftpOptions::default() };
    let mut folder = SftpDrop { options }.open(credentials, deadline).await.expect("connect");
    let export = StreamOptions::default();
    let (sender, receiver) = tokio::sync::mpsc::channel(export.depth);
    let (all, chunk) = (bytes.clone(), export.chunk_bytes);
    let producer = tokio::spawn(async move {
        for offset in (0..all.len()).step_by(chunk) {
            let end = (offset + chunk).min(all.len());
            sender.send(all.slice(offset..end)).await.expect("the writer takes every chunk");
        }
    });
    let sent = folder.upload_stream(receiver, ".Bench-stream.part", deadline).await.expect("streamed");
    producer.await.expect("export");
    assert_eq!(sent, bytes.len() as u64);
    folder.rename(".Bench-stream.part", "Bench-stream.csv").await.expect("rename");
    bytes.len() as f64 / 1e6 / started.elapsed().as_secs_f64()
}

/// Section 4: the streamed temporary beside the delivery from the file and OpenSSH.
async fn stream_section(sshd: &helpers::Sshd, dir: &tempfile::TempDir, remote: &Path) {
    const STREAM_ROUNDS: usize = 3;
    let upload = helpers::random_upload(dir, "Bench-WAN.csv", 64 * 1024 * 1024, 43);
    let bytes = bytes::Bytes::from(std::fs::read(&upload.local_path).expect("local file"));
    let batch = batch(dir.path(), "openssh-stream-put-fsync", "-f", &upload.local_path, remote);
    let key_path = sshd.dir.path().join("client_ed25519");
    let mb = upload.bytes as f64 / 1e6;
    println!(
        "\n4. the streamed temporary, {mb:.0} MB in chunks of {} KiB (connect, stream, rename), {STREAM_ROUNDS} rounds \
         alternating; ratio to OpenSSH",
        StreamOptions::default().chunk_bytes / 1024
    );
    header();
    for rtt_ms in [0u64, 25, 50] {
        let port =
            if rtt_ms == 0 { sshd.port } else { LatencyRelay::start(sshd.port, Duration::from_millis(rtt_ms)).port };
        let mut credentials: SftpCredentials = serde_json::from_value(sshd.secret("PF2")).expect("credentials");
        credentials.port = port;
        let (mut theirs, mut from_file, mut stream) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..STREAM_ROUNDS {
            clear(remote);
            theirs.push(mb / openssh(&batch, &key_path, port));
            clear(remote);
            let options = SftpOptions { io_timeout: Duration::from_secs(60), ..SftpOptions::default() };
            let started = Instant::now();
            assert!(deliver(credentials.clone(), options, &upload).await);
            from_file.push(mb / started.elapsed().as_secs_f64());
            clear(remote);
            stream.push(streamed(credentials.clone(), &bytes).await);
        }
        let reference = summary(&theirs).1;
        line(&format!("{rtt_ms} ms RTT: OpenSSH sftp -b, put -f"), &theirs, reference);
        line(&format!("{rtt_ms} ms RTT: ours from the file, 2048 KiB in flight"), &from_file, reference);
        line(&format!("{rtt_ms} ms RTT: ours streamed, 2048 KiB in flight"), &stream, reference);
    }
}

#[tokio::main]
async fn main() {
    let sshd = helpers::Sshd::start();
    let dir = tempfile::tempdir().expect("dir");
    let remote = sshd.folder("PF2");

    if std::env::args().any(|a| a == "--stream") {
        stream_section(&sshd, &dir, &remote).await;
        return;
    }
    let write_loop_only = std::env::args().any(|a| a == "--write-loop");
    if !write_loop_only {
        loopback_and_distance(&sshd, &dir, &remote).await;
    }
    let upload = helpers::random_upload(&dir, "Bench-WAN.csv", 64 * 1024 * 1024, 43);

    // 3. The write loop alone.
    let relay = LatencyRelay::start(sshd.port, Duration::from_millis(50));
    println!(
        "\n3. the write loop alone, upload of {:.0} MB only (ssh2 directly), {ROUNDS} rounds alternating",
        upload.bytes as f64 / 1e6
    );
    header();
    for (what, port) in [("loopback", sshd.port), ("50 ms RTT", relay.port)] {
        for window in [1024 * 1024, 4 * 1024 * 1024] {
            let (mut drained, mut topped) = (Vec::new(), Vec::new());
            for _ in 0..ROUNDS {
                clear(&remote);
                drained.push(raw_upload(&sshd, port, &upload.local_path, &remote.join("raw-d"), window, false));
                topped.push(raw_upload(&sshd, port, &upload.local_path, &remote.join("raw-t"), window, true));
            }
            let reference = summary(&drained).1;
            let kib = window / 1024;
            line(&format!("{what}, {kib} KiB: each buffer drained (before)"), &drained, reference);
            line(&format!("{what}, {kib} KiB: window topped up (now)"), &topped, reference);
        }
    }
    if !write_loop_only {
        stream_section(&sshd, &dir, &remote).await;
    }
}
