//! Starts and stops the real parts the tests run against, and builds the functions on them.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use aws_sdk_s3::config::{Credentials, Region};
use maestro_relay::app::{self, AppWebhook, AppWorker};
use maestro_relay::config::{WebhookConfig, WorkerConfig};
use maestro_relay::delivery::sftp::SftpDrop;
use maestro_relay::ports::ObjectStore;
use serde_json::{json, Value};

pub const ROOT: &str = env!("CARGO_MANIFEST_DIR");

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free loopback port")
}

pub fn wait_for_port(port: u16, what: &str) {
    let until = Instant::now() + Duration::from_secs(30);
    while Instant::now() < until {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} did not listen on port {port} within 30 s");
}

/// A child process killed when dropped.
pub struct Process(Child);

impl Drop for Sshd {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// ---------------------------------------------------------------- moto_server, shared

pub struct Moto {
    pub endpoint: String,
}

/// moto_server on a loopback port: the project venv's, or `MOTO_SERVER`.
fn moto_command(port: u16) -> Command {
    let binary = std::env::var("MOTO_SERVER").unwrap_or_else(|_| format!("{ROOT}/.venv/bin/moto_server"));
    let mut command = Command::new(binary);
    command.args(["-H", "127.0.0.1", "-p", &port.to_string()]).stdout(Stdio::null()).stderr(Stdio::null());
    command
}

/// One moto_server for the whole test binary. It is started from a thread that lives as
/// long as the process and is killed by the kernel when that thread (the process) ends.
pub fn moto() -> &'static Moto {
    static MOTO: OnceLock<Moto> = OnceLock::new();
    MOTO.get_or_init(|| {
        let port = free_port();
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut command = moto_command(port);
            // SAFETY: prctl is async-signal-safe; it only sets this child's parent-death signal.
            unsafe {
                command.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
            let spawned = command.spawn();
            let ok = spawned.is_ok();
            let _ =
                sender.send(spawned.map(|_| ()).map_err(|e| format!("moto_server: {e} (run scripts/bootstrap.sh)")));
            if ok {
                loop {
                    std::thread::park();
                }
            }
        });
        receiver.recv().expect("moto thread").expect("starting moto_server");
        wait_for_port(port, "moto_server");
        Moto { endpoint: format!("http://127.0.0.1:{port}") }
    })
}

/// A moto_server of one test's own, for a test that stops it; killed when dropped.
pub struct OwnMoto {
    pub endpoint: String,
    process: Option<Process>,
}

impl OwnMoto {
    pub fn start() -> Self {
        let port = free_port();
        let child = moto_command(port).spawn().expect("starting moto_server (run scripts/bootstrap.sh)");
        let process = Process(child);
        wait_for_port(port, "moto_server");
        Self { endpoint: format!("http://127.0.0.1:{port}"), process: Some(process) }
    }

    /// An outage: the port stops answering, connections are refused.
    pub fn stop(&mut self) {
        self.process.take();
    }
}

pub async fn sdk_config(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new("eu-central-1"))
        .credentials_provider(Credentials::new("testing", "testing", None, None, "tests"))
        .load()
        .await
}

pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst))
}

/// A TCP relay to an HTTP endpoint (moto) that holds, without an answer, every `method`
/// request whose path contains `pattern` after the first `let_through` of them: an S3 that
/// takes one write and hangs on the next, where a test then kills the caller. With
/// `start_landing`, the held request reaches S3 and only its answer is held: the write
/// landed, the caller never hears.
pub struct StallingProxy {
    pub endpoint: String,
    stalled: Arc<AtomicBool>,
}

impl StallingProxy {
    pub fn start(upstream: &str, method: &'static str, pattern: &'static str, let_through: usize) -> Self {
        Self::relay(upstream, method, pattern, let_through, false)
    }

    /// As `start`, the held request forwarded: it lands, its answer never comes back.
    pub fn start_landing(upstream: &str, method: &'static str, pattern: &'static str, let_through: usize) -> Self {
        Self::relay(upstream, method, pattern, let_through, true)
    }

    fn relay(upstream: &str, method: &'static str, pattern: &'static str, let_through: usize, land: bool) -> Self {
        let upstream = upstream.trim_start_matches("http://").to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy port");
        let endpoint = format!("http://{}", listener.local_addr().expect("proxy address"));
        let stalled = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(AtomicUsize::new(0));
        let stalled_in = Arc::clone(&stalled);
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(&upstream) else { continue };
                let (mut client_in, mut server_out) = match (client.try_clone(), server.try_clone()) {
                    (Ok(c), Ok(s)) => (c, s),
                    _ => continue,
                };
                let (mut server_in, mut client_out) = (server, client);
                // Set once this connection's held request went through: its answers stop.
                let muted = Arc::new(AtomicBool::new(false));
                let muted_out = Arc::clone(&muted);
                std::thread::spawn(move || {
                    use std::io::{Read, Write};
                    let mut buffer = vec![0u8; 64 * 1024];
                    while let Ok(n) = server_in.read(&mut buffer) {
                        if n == 0 || muted_out.load(Ordering::SeqCst) {
                            break;
                        }
                        if client_out.write_all(&buffer[..n]).is_err() {
                            break;
                        }
                    }
                    while muted_out.load(Ordering::SeqCst) {
                        std::thread::park();
                    }
                });
                let (seen, stalled) = (Arc::clone(&seen), Arc::clone(&stalled_in));
                std::thread::spawn(move || {
                    use std::io::{Read, Write};
                    let mut buffer = vec![0u8; 64 * 1024];
                    while let Ok(n) = client_in.read(&mut buffer) {
                        if n == 0 {
                            break;
                        }
                        let chunk = &buffer[..n];
                        // A request's head arrives first, in one read: "PUT /bucket/key HTTP/1.1".
                        let head = chunk.split(|b| *b == b'\n').next().unwrap_or_default();
                        let matches = head.starts_with(method.as_bytes())
                            && head.windows(pattern.len()).any(|w| w == pattern.as_bytes());
                        if matches && seen.fetch_add(1, Ordering::SeqCst) >= let_through {
                            if land {
                                // The request goes on to S3 (body and all); no answer comes back.
                                muted.store(true, Ordering::SeqCst);
                                let _ = server_out.write_all(chunk);
                                while let Ok(n) = client_in.read(&mut buffer) {
                                    if n == 0 || server_out.write_all(&buffer[..n]).is_err() {
                                        break;
                                    }
                                }
                            }
                            stalled.store(true, Ordering::SeqCst);
                            // Hold the request: no byte of it reaches S3, no answer comes back.
                            loop {
                                std::thread::park();
                            }
                        }
                        if server_out.write_all(chunk).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        Self { endpoint, stalled }
    }

    /// Whether a request was held within `limit`.
    pub fn wait_for_stall(&self, limit: Duration) -> bool {
        let until = Instant::now() + limit;
        while Instant::now() < until {
            if self.stalled.load(Ordering::SeqCst) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }
}

/// A TCP relay to a local port; its port. Each connection's bytes towards the server are
/// moved by `up` and those back by `down`, each on a thread of its own, from the first
/// stream to the second.
fn tcp_relay<U, D>(upstream_port: u16, up: U, down: D) -> u16
where
    U: Fn(TcpStream, TcpStream) + Clone + Send + 'static,
    D: Fn(TcpStream, TcpStream) + Clone + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").expect("proxy port");
    let port = listener.local_addr().expect("proxy address").port();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(server) = TcpStream::connect(("127.0.0.1", upstream_port)) else { continue };
            let (Ok(client_in), Ok(server_out)) = (client.try_clone(), server.try_clone()) else { continue };
            let (up, down) = (up.clone(), down.clone());
            std::thread::spawn(move || up(client_in, server_out));
            std::thread::spawn(move || down(server, client));
        }
    });
    port
}

/// A TCP relay to a local port that lets at most `bytes_per_second` through towards it: a
/// slow link to the SFTP server, for one worker's uploads.
pub struct ThrottlingProxy {
    pub port: u16,
}

impl ThrottlingProxy {
    pub fn start(upstream_port: u16, bytes_per_second: usize) -> Self {
        let throttled = move |mut client_in: TcpStream, mut server_out: TcpStream| {
            use std::io::{Read, Write};
            // A tenth of a second's worth at a time.
            let slice = (bytes_per_second / 10).max(1);
            let mut buffer = vec![0u8; slice];
            while let Ok(n) = client_in.read(&mut buffer) {
                if n == 0 || server_out.write_all(&buffer[..n]).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = server_out.shutdown(std::net::Shutdown::Both);
        };
        let plain = |mut server_in: TcpStream, mut client_out: TcpStream| {
            let _ = std::io::copy(&mut server_in, &mut client_out);
        };
        Self { port: tcp_relay(upstream_port, throttled, plain) }
    }
}

/// A TCP relay to an SSH server that flips one bit of what the server sends, `offset` bytes
/// after its `SSH_MSG_NEWKEYS`: inside the first encrypted packet, which a client must refuse
/// by its tag. `None` relays every byte unchanged (the control).
pub struct TamperingProxy {
    pub port: u16,
}

impl TamperingProxy {
    pub fn start(upstream_port: u16, offset: Option<usize>) -> Self {
        let plain = |mut client_in: TcpStream, mut server_out: TcpStream| {
            let _ = std::io::copy(&mut client_in, &mut server_out);
            let _ = server_out.shutdown(std::net::Shutdown::Write);
        };
        let tampered = move |mut server_in: TcpStream, mut client_out: TcpStream| {
            use std::io::{Read, Write};
            let (mut seen, mut flipped) = (Vec::new(), false);
            let mut buffer = vec![0u8; 64 * 1024];
            while let Ok(n) = server_in.read(&mut buffer) {
                if n == 0 {
                    break;
                }
                if let Some(offset) = offset.filter(|_| !flipped) {
                    let start = seen.len();
                    seen.extend_from_slice(&buffer[..n]);
                    let target = encrypted_from(&seen).map(|e| e + offset);
                    if let Some(at) = target.filter(|at| (start..seen.len()).contains(at)) {
                        buffer[at - start] ^= 0x01;
                        flipped = true;
                        seen = Vec::new();
                    }
                }
                if client_out.write_all(&buffer[..n]).is_err() {
                    break;
                }
            }
            let _ = client_out.shutdown(std::net::Shutdown::Write);
        };
        Self { port: tcp_relay(upstream_port, plain, tampered) }
    }
}

/// Where the server's first encrypted byte is in `stream` (its identification line, then
/// plaintext binary packets: `u32` length, padding length, message type), once the
/// `SSH_MSG_NEWKEYS` (21) packet is whole.
fn encrypted_from(stream: &[u8]) -> Option<usize> {
    let mut at = 0;
    loop {
        let end = at + stream.get(at..)?.iter().position(|&b| b == b'\n')? + 1;
        let is_identification = stream[at..].starts_with(b"SSH-");
        at = end;
        if is_identification {
            break;
        }
    }
    loop {
        let length = u32::from_be_bytes(stream.get(at..at + 4)?.try_into().ok()?) as usize;
        let message_type = *stream.get(at + 5)?;
        let end = at + 4 + length;
        if stream.len() < end {
            return None;
        }
        at = end;
        if message_type == 21 {
            return Some(at);
        }
    }
}

// ---------------------------------------------------------------- sshd, one per test

pub struct Sshd {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub fingerprint: String,
    pub client_key: String,
    /// Environment of the sshd process (the password rig's NSS wrapper).
    env: Vec<(String, String)>,
    process: Option<Process>,
}

impl Sshd {
    pub fn start() -> Self {
        Self::start_configured(|config| config)
    }

    /// As `start`, with `edit` applied to the sshd_config scripts/sshd.sh wrote.
    pub fn start_configured(edit: impl FnOnce(String) -> String) -> Self {
        let mut sshd = Self::start_prepared(edit);
        sshd.resume();
        sshd
    }

    /// The rig, configured, not yet started.
    fn start_prepared(edit: impl FnOnce(String) -> String) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let status = Command::new(format!("{ROOT}/scripts/sshd.sh"))
            .arg(dir.path())
            .arg(port.to_string())
            .status()
            .expect("scripts/sshd.sh");
        assert!(status.success(), "scripts/sshd.sh failed");
        let config_path = dir.path().join("sshd_config");
        let config = std::fs::read_to_string(&config_path).expect("sshd_config");
        std::fs::write(&config_path, edit(config)).expect("sshd_config");
        let fingerprint = Command::new("ssh-keygen")
            .args(["-l", "-E", "sha256", "-f"])
            .arg(dir.path().join("host_ed25519.pub"))
            .output()
            .expect("ssh-keygen");
        let fingerprint =
            String::from_utf8_lossy(&fingerprint.stdout).split_whitespace().nth(1).expect("a fingerprint").to_owned();
        let client_key = std::fs::read_to_string(dir.path().join("client_ed25519")).expect("client key");
        Self { dir, port, fingerprint, client_key, env: Vec::new(), process: None }
    }

    /// An sshd that takes a password for a throwaway user of its own, `relay-pw`, by
    /// `PasswordAuthentication` or, with `keyboard_interactive`, only by PAM's
    /// keyboard-interactive. The user exists only for this sshd: a copy of the system's
    /// passwd and group files plus its line (the password's SHA-512 crypt hash in the
    /// passwd field, the test's own uid, so sshd can serve it without root), handed to sshd
    /// through nss_wrapper (Debian's libnss-wrapper, scripts/bootstrap.sh installs it).
    pub fn with_password_user(password: &str, keyboard_interactive: bool) -> (Self, String) {
        const USER: &str = "relay-pw";
        let mut env = Vec::new();
        let mut sshd = Self::start_prepared(|config| {
            let config = config
                .replace("PasswordAuthentication no", &format!("PasswordAuthentication {}", yes(!keyboard_interactive)))
                .replace(
                    "KbdInteractiveAuthentication no",
                    &format!("KbdInteractiveAuthentication {}", yes(keyboard_interactive)),
                )
                .replace("UsePAM no", &format!("UsePAM {}", yes(keyboard_interactive)))
                .replace("PubkeyAuthentication yes", "PubkeyAuthentication no")
                // The throwaway user has the test's uid, 0 when the tests run as root.
                .replace("PermitRootLogin prohibit-password", "PermitRootLogin yes");
            let dir = config
                .lines()
                .find_map(|l| l.strip_prefix("PidFile "))
                .and_then(|p| p.strip_suffix("/sshd.pid"))
                .expect("the PidFile line")
                .to_owned();
            let hash = Command::new("openssl")
                .args(["passwd", "-6", "-salt", "relaytestsalt", "-stdin"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .and_then(|mut child| {
                    use std::io::Write;
                    child.stdin.take().expect("stdin").write_all(password.as_bytes())?;
                    child.wait_with_output()
                })
                .expect("openssl passwd");
            let hash = String::from_utf8(hash.stdout).expect("hash").trim().to_owned();
            let (uid, gid) = (id("-u"), id("-g"));
            let passwd = std::fs::read_to_string("/etc/passwd").expect("/etc/passwd")
                + &format!("{USER}:{hash}:{uid}:{gid}:throwaway test user:{dir}:/bin/sh\n");
            let group = std::fs::read_to_string("/etc/group").expect("/etc/group");
            std::fs::write(format!("{dir}/passwd"), passwd).expect("passwd file");
            std::fs::write(format!("{dir}/group"), group).expect("group file");
            env = vec![
                ("LD_PRELOAD".to_owned(), nss_wrapper()),
                ("NSS_WRAPPER_PASSWD".to_owned(), format!("{dir}/passwd")),
                ("NSS_WRAPPER_GROUP".to_owned(), format!("{dir}/group")),
            ];
            config
        });
        sshd.env = env;
        sshd.resume();
        (sshd, USER.to_owned())
    }

    /// Starts (again) on the same port with the same keys.
    pub fn resume(&mut self) {
        let child = Command::new("/usr/sbin/sshd")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .args(["-D", "-e", "-f"])
            .arg(self.dir.path().join("sshd_config"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting /usr/sbin/sshd (run scripts/bootstrap.sh)");
        self.process = Some(Process(child));
        wait_for_port(self.port, "sshd");
    }

    /// Kills sshd and every session process it forked: open connections are cut at once.
    pub fn stop(&mut self) {
        if let Some(process) = self.process.take() {
            kill_tree(process.0.id());
        }
    }

    pub fn folder(&self, target: &str) -> PathBuf {
        self.dir.path().join("sap").join(target)
    }

    /// The files SAP would pick up: every name but hidden temporaries.
    pub fn files(&self, target: &str) -> Vec<String> {
        let mut names: Vec<String> = self.all_files(target).into_iter().filter(|name| !name.starts_with('.')).collect();
        names.sort();
        names
    }

    pub fn all_files(&self, target: &str) -> Vec<String> {
        std::fs::read_dir(self.folder(target))
            .map(|entries| {
                entries.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect()
            })
            .unwrap_or_default()
    }

    pub fn secret(&self, target: &str) -> Value {
        json!({
            "host": "127.0.0.1",
            "port": self.port,
            "username": whoami(),
            "private_key": self.client_key,
            "host_key_sha256": self.fingerprint,
            "remote_dir": self.folder(target),
        })
    }
}

/// SIGKILLs a process and all its descendants (sshd's session children call setsid, so a
/// process group does not reach them), found through /proc.
fn kill_tree(root: u32) {
    let mut parents: HashMap<u32, Vec<u32>> = HashMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // The fields after the parenthesised command name: state, ppid, …
        let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
        if let Some(ppid) = ppid {
            parents.entry(ppid).or_default().push(pid);
        }
    }
    let mut pending = vec![root];
    while let Some(pid) = pending.pop() {
        // SAFETY: kill(2) on a pid of our own test's process tree; no memory is touched.
        unsafe {
            libc::kill(pid as i32, libc::SIGKILL);
        }
        pending.extend(parents.get(&pid).into_iter().flatten().copied());
    }
}

/// A local file to deliver and what it must look like on arrival.
#[derive(Debug, Clone)]
pub struct Upload {
    pub local_path: PathBuf,
    pub file_name: String,
    pub bytes: u64,
    pub sha256: String,
}

impl Upload {
    pub fn exported(&self) -> maestro_relay::job::ExportedFile {
        use maestro_relay::csv_out::FileStats;
        maestro_relay::job::ExportedFile {
            file: maestro_relay::job::StagedFile {
                worksheet: "Planned Orders".into(),
                file_name: self.file_name.clone(),
                stats: FileStats { rows: 1, bytes: self.bytes, sha256: self.sha256.clone(), ..FileStats::default() },
            },
            path: self.local_path.clone(),
        }
    }
}

/// One file's first delivery through the SFTP adapter, as the worker makes it (connect,
/// upload, intent, rename, delivered mark; the records in memory), until `deadline`.
pub async fn deliver_once(
    credentials: maestro_relay::secrets::SftpCredentials,
    options: maestro_relay::delivery::sftp::SftpOptions,
    policy: maestro_relay::job::ExistingFilePolicy,
    upload: &Upload,
    trigger: Option<&maestro_relay::job::TriggerFile>,
    deadline: tokio::time::Instant,
) -> maestro_relay::error::Result<maestro_relay::job::DeliveryRecord> {
    use maestro_relay::ports::FileDrop;
    let mut folder = SftpDrop { options }.open(credentials, deadline).await?;
    let store = maestro_relay::memory::MemoryStore::new();
    let file = upload.exported();
    let manifest = one_file_manifest();
    let destination = maestro_relay::delivery::Destination::new(
        &store,
        maestro_relay::delivery::DestinationRun {
            manifest: &manifest,
            owner: "run",
            until: time::OffsetDateTime::now_utc() + time::Duration::minutes(15),
            check_order: true,
            deadline,
            poll: std::time::Duration::from_millis(100),
            names: vec![file.file.file_name.clone()],
            resend: false,
        },
    );
    let records = maestro_relay::job::Records::of_job(maestro_relay::job::job_id("job"));
    let one = maestro_relay::delivery::FileDelivery {
        store: &store,
        records: &records,
        file: &file,
        policy,
        attempt: 1,
        deadline,
        trigger,
        streamed: None,
        destination: &destination,
    };
    one.run(&mut folder, None).await
}

/// The manifest of a one-file job to PF2, for a delivery made outside the worker.
fn one_file_manifest() -> maestro_relay::job::Manifest {
    let manifest = serde_json::json!({
        "jobId": "0123456789abcdef0123456789abcdef", "receivedAt": "2026-01-01T00:00:00Z", "target": "PF2",
        "contentSha256": "00", "eventId": null, "fileName": "PlannedOrders-PF",
        "workbook": {"name": "W", "scope": "Public"}, "worksheets": ["Planned Orders"],
        "scenario": {"name": "S", "scope": "Public"}, "siteGroup": "All Sites", "filter": null, "variables": {},
    });
    serde_json::from_value(manifest).expect("a valid manifest")
}

/// A local file of `size` pseudo-random bytes (seeded), as an SFTP upload.
pub fn random_upload(dir: &tempfile::TempDir, name: &str, size: usize, seed: u64) -> Upload {
    use sha2::Digest;
    use std::io::Write;
    let path = dir.path().join(format!("{name}.local"));
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut file = std::io::BufWriter::new(std::fs::File::create(&path).expect("local file"));
    let mut hasher = sha2::Sha256::new();
    let mut chunk = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(chunk.len());
        rng.fill(&mut chunk[..n]);
        file.write_all(&chunk[..n]).expect("write");
        hasher.update(&chunk[..n]);
        left -= n;
    }
    file.flush().expect("flush");
    Upload { local_path: path, file_name: name.to_owned(), bytes: size as u64, sha256: hex::encode(hasher.finalize()) }
}

/// Debian's libnss-wrapper, where this machine's architecture keeps it.
fn nss_wrapper() -> String {
    ["x86_64-linux-gnu", "aarch64-linux-gnu"]
        .iter()
        .map(|arch| format!("/usr/lib/{arch}/libnss_wrapper.so"))
        .find(|path| Path::new(path).exists())
        .expect("libnss_wrapper.so (run scripts/bootstrap.sh)")
}

fn yes(on: bool) -> &'static str {
    if on {
        "yes"
    } else {
        "no"
    }
}

fn id(flag: &str) -> String {
    let out = Command::new("id").arg(flag).output().expect("id");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

pub fn whoami() -> String {
    let out = Command::new("id").arg("-un").output().expect("id -un");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

// ---------------------------------------------------------------- Kinaxis simulator

pub struct Sim {
    pub url: String,
    _process: Process,
}

impl Sim {
    /// The simulator built by `cargo build -p kinaxis-sim` (make test does) with these flags.
    pub fn start(flags: &[&str]) -> Self {
        let binary = std::env::var("KINAXIS_SIM_BIN").map(PathBuf::from).unwrap_or_else(|_| {
            let exe = std::env::current_exe().expect("test binary path");
            exe.parent().and_then(Path::parent).expect("target dir").join("kinaxis-sim")
        });
        assert!(binary.exists(), "{} missing: run `cargo build -p kinaxis-sim` (make test does)", binary.display());
        let port = free_port();
        let child = Command::new(binary)
            .args(["--port", &port.to_string()])
            .args(flags)
            .stdout(Stdio::null())
            .spawn()
            .expect("starting kinaxis-sim");
        let process = Process(child);
        wait_for_port(port, "kinaxis-sim");
        Self { url: format!("http://127.0.0.1:{port}"), _process: process }
    }

    pub async fn stats(&self) -> Value {
        reqwest::get(format!("{}/_sim/stats", self.url)).await.expect("stats").json().await.expect("stats JSON")
    }
}

// ---------------------------------------------------------------- the app on the stack

/// One test's world: its own bucket and secrets in the shared moto, its own sshd and
/// simulator, and the two functions configured on them.
pub struct TestApp {
    /// The moto_server this app's bucket, secrets and queues live in.
    pub endpoint: String,
    pub bucket: String,
    pub s3: aws_sdk_s3::Client,
    pub secrets: aws_sdk_secretsmanager::Client,
    pub sqs: aws_sdk_sqs::Client,
    pub sdk: aws_config::SdkConfig,
    pub sshd: Sshd,
    pub sim: Sim,
    pub whsec: String,
    pub env: HashMap<String, String>,
}

pub const WHSEC: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

impl TestApp {
    pub async fn start(sim_flags: &[&str]) -> Self {
        Self::start_on(&moto().endpoint, sim_flags).await
    }

    /// As `start`, on the moto_server at `endpoint` (a test that stops its own).
    pub async fn start_on(endpoint: &str, sim_flags: &[&str]) -> Self {
        let sdk = sdk_config(endpoint).await;
        let s3 = aws_sdk_s3::Client::from_conf(aws_sdk_s3::config::Builder::from(&sdk).force_path_style(true).build());
        let secrets = aws_sdk_secretsmanager::Client::new(&sdk);
        let sqs = aws_sdk_sqs::Client::new(&sdk);
        let bucket = unique("staging");
        s3.create_bucket()
            .bucket(&bucket)
            .create_bucket_configuration(
                aws_sdk_s3::types::CreateBucketConfiguration::builder()
                    .location_constraint(aws_sdk_s3::types::BucketLocationConstraint::EuCentral1)
                    .build(),
            )
            .send()
            .await
            .expect("create bucket");
        let sshd = Sshd::start();
        let sim = Sim::start(sim_flags);
        let mut app = Self {
            endpoint: endpoint.to_owned(),
            bucket: bucket.clone(),
            s3,
            secrets,
            sqs,
            sdk,
            sshd,
            sim,
            whsec: WHSEC.to_owned(),
            env: HashMap::new(),
        };
        let webhook_secret = app.put_secret("webhook", json!({"hmac_secrets": [WHSEC]})).await;
        let kinaxis_secret =
            app.put_secret("kinaxis", json!({"client_id": "relay-client", "client_secret": "relay-secret"})).await;
        let pf2 = app.put_secret("sftp-pf2", app.sshd.secret("PF2")).await;
        let wp2 = app.put_secret("sftp-wp2", app.sshd.secret("WP2")).await;
        let spool = std::env::temp_dir();
        let jobs_queue = app.queue("jobs").await;
        let dead_letter_queue = app.queue("dlq").await;
        for (key, value) in [
            ("JOBS_QUEUE_URL", jobs_queue.as_str()),
            ("DEAD_LETTER_QUEUE_URL", dead_letter_queue.as_str()),
            ("RETRY_DEADLINE_MARGIN_SECS", "25"),
            ("WORKSHEETS", "Planned Orders"),
            ("STAGING_BUCKET", bucket.as_str()),
            ("WEBHOOK_SECRET_ID", webhook_secret.as_str()),
            ("KINAXIS_SECRET_ID", kinaxis_secret.as_str()),
            ("KINAXIS_BASE_URL", app.sim.url.as_str()),
            ("KINAXIS_PAGE_SIZE", "300"),
            ("SFTP_SECRET_ID_PF2", pf2.as_str()),
            ("SFTP_SECRET_ID_WP2", wp2.as_str()),
            ("RETRY_INITIAL_MS", "10"),
            ("RETRY_MAX_DELAY_MS", "40"),
            ("SFTP_CONNECT_TIMEOUT_SECS", "5"),
            ("SFTP_IO_TIMEOUT_SECS", "20"),
            ("SPOOL_DIR", spool.to_str().unwrap_or("/tmp")),
        ] {
            app.env.insert(key.to_owned(), value.to_owned());
        }
        app
    }

    pub async fn queue(&self, name: &str) -> String {
        let created = self.sqs.create_queue().queue_name(unique(name)).send().await.expect("create queue");
        created.queue_url().expect("queue url").to_owned()
    }

    /// The ARN of the queue at `url`, for a notification or rule that targets it.
    pub async fn queue_arn(&self, url: &str) -> String {
        self.sqs
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
            .send()
            .await
            .expect("queue attributes")
            .attributes()
            .and_then(|a| a.get(&aws_sdk_sqs::types::QueueAttributeName::QueueArn).cloned())
            .expect("queue arn")
    }

    pub async fn put_secret(&self, name: &str, value: Value) -> String {
        let id = unique(name);
        self.secrets.create_secret().name(&id).secret_string(value.to_string()).send().await.expect("create secret");
        id
    }

    pub async fn set_secret(&self, id: &str, value: Value) {
        self.secrets
            .put_secret_value()
            .secret_id(id)
            .secret_string(value.to_string())
            .send()
            .await
            .expect("put secret value");
    }

    fn lookup(&self) -> impl Fn(&str) -> Option<String> + '_ {
        |name| self.env.get(name).cloned()
    }

    pub fn webhook(&self) -> AppWebhook {
        app::webhook(WebhookConfig::from_lookup(&self.lookup()).expect("webhook config"), &self.sdk)
    }

    pub fn worker(&self) -> AppWorker {
        app::worker(self.worker_config(), &self.sdk)
    }

    /// The worker as the binary wires it, on `store` in place of the app's bucket.
    pub fn worker_on<S: ObjectStore>(&self, store: S) -> AppWorker<S> {
        app::worker_on(self.worker_config(), &self.sdk, store)
    }

    pub fn worker_config(&self) -> WorkerConfig {
        WorkerConfig::from_lookup(&self.lookup()).expect("worker config")
    }

    /// The messages on the app's dead-letter queue, with their failure reasons.
    pub async fn dead_letters(&self) -> Vec<(String, String)> {
        let out = self
            .sqs
            .receive_message()
            .queue_url(&self.env["DEAD_LETTER_QUEUE_URL"])
            .max_number_of_messages(10)
            .message_attribute_names("All")
            .send()
            .await
            .expect("receive from the DLQ");
        out.messages()
            .iter()
            .map(|m| {
                let reason = m
                    .message_attributes()
                    .and_then(|a| a.get("FailureReason"))
                    .and_then(|v| v.string_value())
                    .unwrap_or_default()
                    .to_owned();
                (m.body().unwrap_or_default().to_owned(), reason)
            })
            .collect()
    }

    pub async fn object(&self, key: &str) -> Option<Vec<u8>> {
        let out = self.s3.get_object().bucket(&self.bucket).key(key).send().await.ok()?;
        Some(out.body.collect().await.ok()?.into_bytes().to_vec())
    }

    pub async fn json_object(&self, key: &str) -> Option<Value> {
        self.object(key).await.and_then(|b| serde_json::from_slice(&b).ok())
    }

    pub async fn keys(&self, prefix: &str) -> Vec<String> {
        let out = self.s3.list_objects_v2().bucket(&self.bucket).prefix(prefix).send().await.expect("list");
        out.contents().iter().filter_map(|o| o.key().map(str::to_owned)).collect()
    }

    /// Sends a webhook through the Lambda entry point, returning the status and body.
    pub async fn post_webhook(&self, event: &Value) -> (u16, Value) {
        let request = lambda_http::request::from_str(&event.to_string()).expect("an API Gateway event");
        let response = self.webhook().handle_lambda(request).await;
        let status = response.status().as_u16();
        let body = serde_json::from_slice(response.body().as_ref()).unwrap_or(Value::Null);
        (status, body)
    }

    /// Stages a job through the webhook and returns its id.
    pub async fn accepted_job(&self, event_file: &str) -> String {
        let (status, body) = self.post_webhook(&signed_event(event_file, &self.whsec)).await;
        assert_eq!(status, 202, "{body}");
        body["jobId"].as_str().expect("jobId").to_owned()
    }

    /// A function binary on one event (written to `event_path`) as Lambda runs it: through
    /// scripts/lambda_rie.py, with this app's environment and the local AWS endpoint.
    pub fn invocation(&self, binary: &str, event: &Value, event_path: &Path) -> Command {
        std::fs::write(event_path, event.to_string()).expect("event file");
        let mut command = Command::new(format!("{ROOT}/.venv/bin/python"));
        command
            .arg(format!("{ROOT}/scripts/lambda_rie.py"))
            .arg(event_path)
            .arg("--")
            .arg(binary)
            .envs(&self.env)
            .env("AWS_ENDPOINT_URL", &self.endpoint)
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_REGION", "eu-central-1");
        command
    }

    /// The app's environment written as the local stack writes `.local/stack/env` (values
    /// quoted for a shell), for `maestro-relay --env-file`.
    pub fn env_file(&self, dir: &Path) -> PathBuf {
        let quote = |v: &str| format!("'{}'", v.replace('\'', "'\\''"));
        let aws = [
            ("AWS_ENDPOINT_URL", self.endpoint.as_str()),
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_REGION", "eu-central-1"),
        ];
        let mut text = String::from("# written by the test, as scripts/local_aws.py writes it\n");
        for (key, value) in self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).chain(aws) {
            text.push_str(&format!("{key}={}\n", quote(value)));
        }
        let path = dir.join("env");
        std::fs::write(&path, text).expect("env file");
        path
    }

    /// `maestro-relay` with `args` on this app's stack (through `MAESTRO_RELAY_ENV_FILE`, as
    /// the runbook's commands are run): its exit code, standard output and error.
    pub fn tool(&self, env_file: &Path, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_maestro-relay"))
            .args(args)
            .current_dir(ROOT)
            .env("MAESTRO_RELAY_ENV_FILE", env_file)
            .env_remove("MAESTRO_RELAY_STACK")
            .env("USER", "test-operator")
            .output()
            .expect("running maestro-relay");
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
    }

    /// Waits until the job's lease (and a destination claim its run held) has run out, as
    /// time passes after a run was killed.
    pub async fn until_the_lease_runs_out(&self, job_id: &str) {
        if let Some(lease) = self.json_object(&format!("locks/{job_id}")).await {
            let until = time::OffsetDateTime::parse(
                lease["expiresAt"].as_str().unwrap_or_default(),
                &time::format_description::well_known::Rfc3339,
            )
            .expect("lease expiry");
            let wait = (until - time::OffsetDateTime::now_utc()).whole_milliseconds().max(0) as u64 + 300;
            tokio::time::sleep(Duration::from_millis(wait)).await;
        }
    }

    /// The invocation's deadline: its steps stop RETRY_DEADLINE_MARGIN_SECS (25 s) before.
    pub fn deadline(&self) -> tokio::time::Instant {
        tokio::time::Instant::now() + Duration::from_secs(150)
    }
}

/// An event file from `events/`, signed now as Kinaxis would sign it.
pub fn signed_event(file: &str, whsec: &str) -> Value {
    let mut event = load_event(file);
    let body = event_body(&event);
    sign_event(&mut event, whsec, &body, now());
    event
}

pub fn load_event(file: &str) -> Value {
    let text = std::fs::read_to_string(format!("{ROOT}/events/{file}")).expect("event file");
    serde_json::from_str(&text).expect("event JSON")
}

pub fn event_body(event: &Value) -> Vec<u8> {
    use base64::Engine;
    let body = event["body"].as_str().unwrap_or_default();
    if event["isBase64Encoded"].as_bool() == Some(true) {
        base64::engine::general_purpose::STANDARD.decode(body).expect("base64 body")
    } else {
        body.as_bytes().to_vec()
    }
}

pub fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Sets the body (keeping the event's encoding) and a fresh signature over it.
pub fn sign_event(event: &mut Value, whsec: &str, body: &[u8], timestamp: i64) {
    use base64::Engine;
    if event["isBase64Encoded"].as_bool() == Some(true) {
        event["body"] = json!(base64::engine::general_purpose::STANDARD.encode(body));
    } else {
        event["body"] = json!(String::from_utf8_lossy(body));
    }
    let headers = event["headers"].as_object_mut().expect("headers");
    let id = headers.get("webhook-id").and_then(Value::as_str).unwrap_or_default().to_owned();
    let signature = maestro_relay::webhook::auth::sign(whsec, &id, timestamp, body).expect("signature");
    headers.insert("webhook-timestamp".into(), json!(timestamp.to_string()));
    headers.insert("webhook-signature".into(), json!(signature));
    if let Some(multi) = event.get_mut("multiValueHeaders").and_then(Value::as_object_mut) {
        multi.insert("webhook-timestamp".into(), json!([timestamp.to_string()]));
        multi.insert("webhook-signature".into(), json!([signature]));
    }
}

/// An SQS event carrying S3's notification for a job manifest, as the queue delivers it.
pub fn sqs_event_for(job_id: &str, message_id: &str) -> Value {
    let mut event = load_event("worker-sqs-job.json");
    let mut notification: Value =
        serde_json::from_str(event["Records"][0]["body"].as_str().expect("body")).expect("S3 event");
    notification["Records"][0]["s3"]["object"]["key"] = json!(format!("jobs%2F{job_id}.json"));
    event["Records"][0]["body"] = json!(notification.to_string());
    event["Records"][0]["messageId"] = json!(message_id);
    event
}
