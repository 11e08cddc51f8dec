//! The SFTP adapter of the `FileDrop` port: pinned host key, authentication, and the folder
//! operations delivery decides from (size, read-back hash, upload with fsync, rename,
//! remove, list); libssh2 is blocking and runs on the blocking pool, never on the executor.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD_NO_PAD;
use base64::Engine;
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};
use ssh2::{ErrorCode, HashType, OpenFlags, OpenType, Session, Sftp};

use crate::error::{Error, ErrorClass, Result, ResultExt, Step};
use crate::job::Replaced;
use crate::outlet::block_within;
use crate::ports::{FileDrop, Guarded, RemoteEntry, RemoteFolder};
use crate::secrets::SftpCredentials;

#[derive(Debug, Clone)]
pub struct SftpOptions {
    pub connect_timeout: Duration,
    /// libssh2's timeout for each blocking call.
    pub io_timeout: Duration,
    pub keepalive_interval: Duration,
    /// Bytes kept in SFTP write requests in flight (libssh2 makes 30,000-byte requests of
    /// them); at a distance, the upload runs at about this much per round trip.
    pub write_chunk: usize,
    pub create_dir: bool,
}

impl Default for SftpOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(15),
            io_timeout: Duration::from_secs(60),
            keepalive_interval: Duration::from_secs(15),
            write_chunk: 2 * 1024 * 1024,
            create_dir: false,
        }
    }
}

/// The host key algorithms offered, in this order: the server's key of the first one it
/// also offers is the one checked against the pins, so the pin must be of that key.
/// SHA-1 `ssh-rsa` and DSA are not offered; an RSA key is used with SHA-2 signatures.
pub const HOST_KEY_ALGORITHMS: &str =
    "ssh-ed25519,ecdsa-sha2-nistp256,ecdsa-sha2-nistp384,ecdsa-sha2-nistp521,rsa-sha2-512,rsa-sha2-256";

fn key_type_name(key_type: ssh2::HostKeyType) -> &'static str {
    match key_type {
        ssh2::HostKeyType::Rsa => "rsa",
        ssh2::HostKeyType::Ed25519 => "ed25519",
        ssh2::HostKeyType::Ecdsa256 => "ecdsa-nistp256",
        ssh2::HostKeyType::Ecdsa384 => "ecdsa-nistp384",
        ssh2::HostKeyType::Ecdsa521 => "ecdsa-nistp521",
        _ => "other",
    }
}

/// OpenSSH's fingerprint form: `SHA256:` and the unpadded base64 of the key's SHA-256.
pub fn fingerprint(key_hash: &[u8]) -> String {
    format!("SHA256:{}", STANDARD_NO_PAD.encode(key_hash))
}

fn normalize_fingerprint(pinned: &str) -> String {
    let bare = pinned.trim().trim_start_matches("SHA256:").trim_end_matches('=');
    format!("SHA256:{bare}")
}

fn ssh_error(err: ssh2::Error, what: &str) -> Error {
    // LIBSSH2_ERROR_FILE (-16) unreadable key, AUTHENTICATION_FAILED (-18),
    // PUBLICKEY_UNVERIFIED (-19); SFTP NO_SUCH_FILE (2), PERMISSION_DENIED (3).
    let class = match err.code() {
        ErrorCode::Session(-16 | -18 | -19) | ErrorCode::SFTP(2 | 3) => ErrorClass::Permanent,
        _ => ErrorClass::Transient,
    };
    Error::new(class, Step::Deliver, what.to_owned()).caused_by(err)
}

fn connect(credentials: &SftpCredentials, options: &SftpOptions) -> Result<Session> {
    let endpoint = format!("{}:{}", credentials.host, credentials.port);
    let address = (credentials.host.as_str(), credentials.port)
        .to_socket_addrs()
        .or_transient(Step::Deliver, format!("resolving {endpoint}"))?
        .next()
        .ok_or_else(|| Error::transient(Step::Deliver, format!("{endpoint} resolves to no address")))?;
    let tcp = TcpStream::connect_timeout(&address, options.connect_timeout)
        .or_transient(Step::Deliver, format!("connecting to {endpoint}"))?;
    let mut session = Session::new().map_err(|e| ssh_error(e, "starting an SSH session"))?;
    session
        .method_pref(ssh2::MethodType::HostKey, HOST_KEY_ALGORITHMS)
        .map_err(|e| ssh_error(e, "setting the host key algorithms"))?;
    session.set_tcp_stream(tcp);
    session.set_timeout(options.io_timeout.as_millis().min(u32::MAX as u128) as u32);
    session.handshake().map_err(|e| {
        // KEX_FAILURE (-5) is also what a server offering only host key types we do not
        // accept (SHA-1 `ssh-rsa`, DSA) looks like: said, so an operator need not guess.
        let what = if e.code() == ErrorCode::Session(-5) {
            format!(
                "SSH handshake with {endpoint}: no key exchange agreed (a server offering only ssh-rsa with SHA-1 or DSA \
                 host keys is refused; accepted: {HOST_KEY_ALGORITHMS})"
            )
        } else {
            format!("SSH handshake with {endpoint}")
        };
        ssh_error(e, &what)
    })?;

    let offered = session
        .host_key_hash(HashType::Sha256)
        .map(fingerprint)
        .ok_or_else(|| Error::permanent(Step::Deliver, format!("{endpoint} offered no host key")))?;
    let key_type = session.host_key().map(|(_, t)| key_type_name(t)).unwrap_or("unknown");
    let pinned: Vec<String> = credentials.host_key_sha256.0.iter().map(|p| normalize_fingerprint(p)).collect();
    if !pinned.contains(&offered) {
        return Err(Error::permanent(
            Step::Deliver,
            format!(
                "host key of {endpoint} ({key_type}, the first of {HOST_KEY_ALGORITHMS} the server offers) is \
                 {offered}, none of the pinned {}: nothing was sent",
                pinned.join(", ")
            ),
        ));
    }
    tracing::debug!(host_key = %offered, key_type, "host key matches a pin");
    session.set_keepalive(false, options.keepalive_interval.as_secs().max(1) as u32);

    let user = credentials.username.as_str();
    if let Some(key) = &credentials.private_key {
        let passphrase = credentials.passphrase.as_ref().map(|p| p.expose_secret());
        if let Err(err) = session.userauth_pubkey_memory(user, None, key.expose_secret(), passphrase) {
            if credentials.password.is_none() {
                return Err(ssh_error(err, &format!("{endpoint} refused the private key of {user}")));
            }
        }
    }
    if !session.authenticated() {
        if let Some(password) = &credentials.password {
            authenticate_with_password(&session, &endpoint, user, password)?;
        }
    }
    if !session.authenticated() {
        return Err(Error::permanent(
            Step::Deliver,
            format!(
                "{endpoint}: no accepted credential for {user} (the secret holds neither a valid key nor password)"
            ),
        ));
    }
    Ok(session)
}

/// The password by `password` authentication where the server offers it, else by
/// `keyboard-interactive` (a PAM server's way), answering every prompt with it.
fn authenticate_with_password(
    session: &Session,
    endpoint: &str,
    user: &str,
    password: &secrecy::SecretString,
) -> Result<()> {
    // Asking (the `none` method) tells which methods the server offers for the user; a
    // failure to ask is the connection's, not a refusal of the password.
    let offered = session
        .auth_methods(user)
        .map(str::to_owned)
        .map_err(|e| ssh_error(e, &format!("asking {endpoint} which authentication methods it offers {user}")))?;
    if session.authenticated() {
        return Ok(());
    }
    let offers = |method: &str| offered.split(',').any(|m| m == method);
    if offers("password") {
        return session
            .userauth_password(user, password.expose_secret())
            .map_err(|e| ssh_error(e, &format!("{endpoint} refused the password of {user}")));
    }
    if offers("keyboard-interactive") {
        let mut prompter = PasswordPrompter { password, prompts: 0, rounds: 0 };
        let result = session.userauth_keyboard_interactive(user, &mut prompter);
        return result.map_err(|e| {
            ssh_error(
                e,
                &format!(
                    "{endpoint} refused the password of {user} (keyboard-interactive, {} prompts answered)",
                    prompter.prompts
                ),
            )
        });
    }
    Err(Error::permanent(
        Step::Deliver,
        format!("{endpoint} offers {user} neither password nor keyboard-interactive authentication (only {offered:?})"),
    ))
}

/// Answers each keyboard-interactive prompt with the password.
struct PasswordPrompter<'a> {
    password: &'a secrecy::SecretString,
    /// Prompts answered with the password.
    prompts: usize,
    rounds: usize,
}

/// The password goes only to prompts that hide their answer (a password prompt); anything
/// else (an echoed question, a one-time code) gets an empty answer, and after a few rounds
/// every answer is empty, so a server asking for more than a password is refused, never
/// sent the password again and again.
const MAX_PASSWORD_ROUNDS: usize = 3;

impl ssh2::KeyboardInteractivePrompt for PasswordPrompter<'_> {
    fn prompt<'b>(&mut self, _username: &str, _instructions: &str, prompts: &[ssh2::Prompt<'b>]) -> Vec<String> {
        self.rounds += 1;
        prompts
            .iter()
            .map(|prompt| {
                if prompt.echo || self.rounds > MAX_PASSWORD_ROUNDS {
                    String::new()
                } else {
                    self.prompts += 1;
                    self.password.expose_secret().to_owned()
                }
            })
            .collect()
    }
}

/// Connects to SAP folders over SFTP.
#[derive(Debug, Clone)]
pub struct SftpDrop {
    pub options: SftpOptions,
}

impl FileDrop for SftpDrop {
    type Folder = SftpFolder;

    async fn open(&self, credentials: SftpCredentials, deadline: tokio::time::Instant) -> Result<SftpFolder> {
        let options = self.options.clone();
        let deadline = deadline.into_std();
        let dir = credentials.remote_dir.trim_end_matches('/').to_owned();
        let span = tracing::Span::current();
        let connection = tokio::task::spawn_blocking(move || {
            span.in_scope(|| {
                let session = connect(&credentials, &options)?;
                let sftp = session.sftp().map_err(|e| ssh_error(e, "opening the SFTP channel"))?;
                if options.create_dir {
                    create_dir_all(&sftp, credentials.remote_dir.trim_end_matches('/'))?;
                }
                Ok(Connection { session, sftp, options, posix: std::sync::Mutex::new(PosixState::Untried) })
            })
        })
        .await
        .or_transient(Step::Deliver, "the SFTP task stopped")??;
        Ok(SftpFolder { dir, connection: Some(connection), deadline })
    }
}

/// libssh2's timeout for the next call: the I/O timeout, but never much past the deadline,
/// since a blocking call cannot be cut from outside and what it leaves (a temporary) is
/// only cleaned up if it returns. The floor leaves a cleanup call its moment.
fn call_timeout(io_timeout: Duration, deadline: Instant) -> u32 {
    const FLOOR: Duration = Duration::from_millis(500);
    let remaining = deadline.saturating_duration_since(Instant::now()).max(FLOOR);
    io_timeout.min(remaining).as_millis().min(u32::MAX as u128) as u32
}

struct Connection {
    session: Session,
    sftp: Sftp,
    options: SftpOptions,
    /// The raw SFTP channel for `posix-rename@openssh.com`, opened at the first replace.
    posix: std::sync::Mutex<PosixState>,
}

/// Whether this connection replaces files in one step.
enum PosixState {
    /// Not asked yet, or the channel was dropped after a failure that may have left it
    /// mid-request: opened at the next replace.
    Untried,
    Open(PosixRename),
    /// The server would not open a second SFTP channel (a server allowing one session per
    /// connection, such as OpenSSH with `MaxSessions 1`): remove-then-rename.
    Unavailable(String),
}

/// An open SFTP session on one remote directory. Each operation moves the connection onto
/// the blocking pool and back; an operation cut short (the deadline) loses the connection,
/// and later operations say so.
pub struct SftpFolder {
    dir: String,
    connection: Option<Connection>,
    deadline: Instant,
}

impl SftpFolder {
    async fn blocking<T, F>(&mut self, operation: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let connection = self.connection.take().ok_or_else(|| {
            Error::transient(Step::Deliver, "the SFTP connection was lost when an earlier operation was cut short")
        })?;
        let span = tracing::Span::current();
        let deadline = self.deadline;
        let (connection, result) = tokio::task::spawn_blocking(move || {
            connection.session.set_timeout(call_timeout(connection.options.io_timeout, deadline));
            let result = span.in_scope(|| operation(&connection));
            (connection, result)
        })
        .await
        .or_transient(Step::Deliver, "the SFTP task stopped")?;
        self.connection = Some(connection);
        result
    }
}

impl Drop for SftpFolder {
    /// Says goodbye on the blocking pool: a disconnect is blocking I/O.
    fn drop(&mut self) {
        if let Some(connection) = self.connection.take() {
            let goodbye = move || {
                let _ = connection.session.disconnect(None, "done", None);
            };
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => drop(runtime.spawn_blocking(goodbye)),
                Err(_) => goodbye(),
            }
        }
    }
}

impl RemoteFolder for SftpFolder {
    fn path_of(&self, name: &str) -> String {
        format!("{}/{name}", self.dir)
    }

    async fn size(&mut self, name: &str) -> Result<Option<u64>> {
        let path = self.path_of(name);
        self.blocking(move |c| match c.sftp.stat(Path::new(&path)) {
            Ok(stat) => Ok(Some(stat.size.unwrap_or(0))),
            Err(err) if err.code() == ErrorCode::SFTP(NO_SUCH_FILE) => Ok(None),
            Err(err) => Err(ssh_error(err, &format!("checking {path}"))),
        })
        .await
    }

    async fn sha256(&mut self, name: &str) -> Result<Option<String>> {
        let path = self.path_of(name);
        self.blocking(move |c| remote_sha256(&c.sftp, &path)).await
    }

    async fn upload(&mut self, local: &Path, name: &str, deadline: tokio::time::Instant) -> Result<()> {
        let (local, path) = (local.to_owned(), self.path_of(name));
        let deadline = deadline.into_std();
        self.blocking(move |c| {
            let written = write_remote(c, &local, &path, deadline);
            if written.is_err() {
                // Nothing half-written stays behind under a name an attempt could mistake.
                let _ = c.sftp.unlink(Path::new(&path));
            }
            written
        })
        .await
    }

    async fn upload_stream(
        &mut self,
        chunks: tokio::sync::mpsc::Receiver<bytes::Bytes>,
        name: &str,
        deadline: tokio::time::Instant,
    ) -> Result<u64> {
        let path = self.path_of(name);
        let deadline = deadline.into_std();
        // The connection's blocking thread for the whole file, fed by the bounded channel.
        self.blocking(move |c| {
            let written = write_stream(c, chunks, &path, deadline);
            if written.is_err() {
                let _ = c.sftp.unlink(Path::new(&path));
            }
            written
        })
        .await
    }

    async fn rename(&mut self, from: &str, to: &str) -> Result<Guarded> {
        let (from, to) = (self.path_of(from), self.path_of(to));
        self.blocking(move |c| match c.sftp.rename(Path::new(&from), Path::new(&to), None) {
            Ok(()) => Ok(Guarded::Written),
            // OpenSSH (SFTP v3) refuses to rename onto an existing file.
            Err(_) if c.sftp.stat(Path::new(&to)).is_ok() => Ok(Guarded::Refused),
            Err(err) => Err(ssh_error(err, &format!("renaming {from} to {to}"))),
        })
        .await
    }

    async fn replace(&mut self, from: &str, to: &str) -> Result<Replaced> {
        let (from, to) = (self.path_of(from), self.path_of(to));
        self.blocking(move |c| replace(c, &from, &to)).await
    }

    async fn remove(&mut self, name: &str) -> Result<()> {
        let path = self.path_of(name);
        self.blocking(move |c| match c.sftp.unlink(Path::new(&path)) {
            Ok(()) => Ok(()),
            Err(err) if err.code() == ErrorCode::SFTP(NO_SUCH_FILE) => Ok(()),
            Err(err) => Err(ssh_error(err, &format!("removing {path}"))),
        })
        .await
    }

    async fn list(&mut self) -> Result<Vec<RemoteEntry>> {
        let dir = self.dir.clone();
        self.blocking(move |c| {
            let entries = c.sftp.readdir(Path::new(&dir)).map_err(|e| ssh_error(e, &format!("listing {dir}")))?;
            Ok(entries
                .into_iter()
                .filter_map(|(path, stat)| {
                    let name = path.file_name()?.to_string_lossy().into_owned();
                    Some(RemoteEntry { name, modified: stat.mtime })
                })
                .collect())
        })
        .await
    }
}

/// SFTP status code of a missing file (SSH_FX_NO_SUCH_FILE).
const NO_SUCH_FILE: i32 = 2;

/// The hidden temporary a file is written under, emptied if an attempt left one.
fn create_temporary(c: &Connection, temp_path: &str) -> Result<ssh2::File> {
    c.sftp
        .open_mode(
            Path::new(temp_path),
            OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::TRUNCATE,
            0o640,
            OpenType::File,
        )
        .map_err(|e| ssh_error(e, &format!("creating {temp_path}")))
}

fn write_remote(c: &Connection, local_path: &Path, temp_path: &str, deadline: Instant) -> Result<()> {
    let local =
        std::fs::File::open(local_path).or_transient(Step::Deliver, format!("opening {}", local_path.display()))?;
    write_windowed(c, &mut Staged { file: local, path: local_path }, temp_path, deadline).map(|_| ())
}

/// As `write_remote`, the bytes taken from a channel as the export produces them; the
/// channel is dropped on failure, which tells the export to stop sending here.
fn write_stream(
    c: &Connection,
    chunks: tokio::sync::mpsc::Receiver<bytes::Bytes>,
    temp_path: &str,
    deadline: Instant,
) -> Result<u64> {
    write_windowed(c, &mut Exported { chunks, pending: bytes::Bytes::new() }, temp_path, deadline)
}

/// Whether a source may give more bytes after a fill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    More,
    /// Nothing at hand now; more may come.
    Dry,
    End,
}

/// Where the bytes of a temporary come from.
trait Source {
    /// Appends what is at hand to `into`, up to its length; with `wait`, waits at most that
    /// long when nothing is. The bytes appended and whether more may come.
    fn fill(&mut self, into: &mut [u8], wait: Option<Duration>) -> Result<(usize, Flow)>;
}

/// A staged file: everything is always at hand.
struct Staged<'a> {
    file: std::fs::File,
    path: &'a Path,
}

impl Source for Staged<'_> {
    fn fill(&mut self, into: &mut [u8], _wait: Option<Duration>) -> Result<(usize, Flow)> {
        let filled =
            fill(&mut self.file, into).or_transient(Step::Deliver, format!("reading {}", self.path.display()))?;
        Ok((filled, if filled < into.len() { Flow::End } else { Flow::More }))
    }
}

/// The export's chunks as they arrive; a chunk larger than the room in the window is
/// taken in parts.
struct Exported {
    chunks: tokio::sync::mpsc::Receiver<bytes::Bytes>,
    pending: bytes::Bytes,
}

impl Source for Exported {
    fn fill(&mut self, into: &mut [u8], mut wait: Option<Duration>) -> Result<(usize, Flow)> {
        use tokio::sync::mpsc::error::TryRecvError;
        let mut filled = 0;
        loop {
            let n = self.pending.len().min(into.len() - filled);
            into[filled..filled + n].copy_from_slice(&self.pending.split_to(n));
            filled += n;
            if filled == into.len() {
                return Ok((filled, Flow::More));
            }
            let next = match self.chunks.try_recv() {
                Ok(chunk) => Some(chunk),
                Err(TryRecvError::Disconnected) => None,
                // One wait per fill: an empty chunk must not stretch it past its bound.
                Err(TryRecvError::Empty) => match wait.take() {
                    Some(bound) if filled == 0 => match block_within(self.chunks.recv(), bound) {
                        Some(next) => next,
                        None => return Ok((0, Flow::Dry)),
                    },
                    _ => return Ok((filled, Flow::Dry)),
                },
            };
            match next {
                Some(chunk) => self.pending = chunk,
                None => return Ok((filled, Flow::End)),
            }
        }
    }
}

/// Writes `source` to a new temporary; the bytes acknowledged.
fn write_windowed(c: &Connection, source: &mut impl Source, temp_path: &str, deadline: Instant) -> Result<u64> {
    let mut remote = create_temporary(c, temp_path)?;
    // A window of `write_chunk` bytes stays handed to libssh2, topped up as its head is
    // acknowledged. libssh2 turns every byte it is given beyond those already sent into
    // 30,000-byte write requests at once and returns as soon as the first is acknowledged,
    // expecting the unacknowledged rest again: handing back only the rest of one buffer
    // drains the pipeline to nothing before each refill, which costs a round trip per
    // buffer at a distance. Refills come in steps of `REFILL`, not on every
    // acknowledgement; the bytes stay contiguous and in order from call to call, as libssh2
    // expects them. The window is moved (compacted) when a refill would pass the buffer's
    // end: on loopback, where little is in flight, that moves little; at a distance, with
    // the window full, it moves up to the window per refill. A buffer twice the window moves
    // it once per window instead, at 1.8 MB more peak memory, for 3 % (noise-level) less
    // CPU under the Lambda shape (docs/performance.md): not taken.
    let window = c.options.write_chunk.max(REFILL);
    let mut buffer = vec![0u8; window + REFILL];
    let (mut head, mut tail, mut flow) = (0usize, 0usize, Flow::More);
    let keepalive_interval = c.options.keepalive_interval.max(Duration::from_secs(1));
    let mut last_keepalive = Instant::now();
    let mut sent = 0u64;
    loop {
        // Waiting for the export's next bytes must not outlast the deadline either, and a
        // slow export must not let the connection idle out: the thread sleeps until a chunk
        // comes, the channel ends, the next keepalive is due or the deadline.
        let now = Instant::now();
        if now >= deadline {
            return Err(Error::transient(
                Step::Deliver,
                format!("the deadline was reached after {sent} bytes of {temp_path}; the upload stopped"),
            ));
        }
        let keepalive_at = last_keepalive + keepalive_interval;
        if now >= keepalive_at {
            let _ = c.session.keepalive_send();
            last_keepalive = now;
            continue;
        }
        let idle = head == tail;
        if flow != Flow::End && (flow == Flow::More || idle) && tail - head + REFILL <= window {
            if tail + REFILL > buffer.len() {
                buffer.copy_within(head..tail, 0);
                (head, tail) = (0, tail - head);
            }
            // Only with nothing in flight is waiting free: with requests out, the thread's
            // place is in libssh2, collecting acknowledgements while the export catches up.
            let wait = idle.then(|| keepalive_at.min(deadline) - now);
            let (filled, next) = source.fill(&mut buffer[tail..tail + REFILL], wait)?;
            (tail, flow) = (tail + filled, next);
            continue;
        }
        if idle {
            break;
        }
        // A write blocks until an acknowledgement: bounded by the deadline like any call.
        c.session.set_timeout(call_timeout(c.options.io_timeout, deadline));
        // 0 is no error: libssh2 answers it when a request went out only in part (the
        // channel window was full) before any was acknowledged; the next call goes on.
        let acknowledged = match remote.write(&buffer[head..tail]) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::transient(Step::Deliver, format!("writing {temp_path}")).caused_by(e)),
        };
        head += acknowledged;
        sent += acknowledged as u64;
        // The write waited a round trip for an acknowledgement: the export may have sent
        // more meanwhile.
        if flow == Flow::Dry {
            flow = Flow::More;
        }
    }
    if let Err(err) = remote.fsync() {
        tracing::debug!(error = %err, "the server offers no fsync; relying on the size check");
    }
    Ok(sent)
}

/// Bytes read into the window at a time: eight of libssh2's 30,000-byte write requests.
const REFILL: usize = 8 * 30_000;

fn fill(reader: &mut impl Read, buffer: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match reader.read(&mut buffer[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

fn remote_sha256(sftp: &Sftp, path: &str) -> Result<Option<String>> {
    let what = format!("reading back {path}");
    let mut remote = match sftp.open(Path::new(path)) {
        Ok(remote) => remote,
        Err(err) if err.code() == ErrorCode::SFTP(NO_SUCH_FILE) => return Ok(None),
        Err(err) => return Err(ssh_error(err, &what)),
    };
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 256 * 1024];
    loop {
        let n = remote.read(&mut buffer).or_transient(Step::Deliver, what.clone())?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(Some(hex::encode(hasher.finalize())))
}

fn create_dir_all(sftp: &Sftp, dir: &str) -> Result<()> {
    let mut path = String::new();
    for part in dir.split('/').filter(|p| !p.is_empty()) {
        path.push('/');
        path.push_str(part);
        if sftp.stat(Path::new(&path)).is_err() {
            sftp.mkdir(Path::new(&path), 0o750)
                .map_err(|e| ssh_error(e, &format!("creating remote directory {path}")))?;
        }
    }
    Ok(())
}

// ------------------------------------------------------------ atomic replace

/// Renames `from` onto `to` in one step with `posix-rename@openssh.com`; where the server
/// does not offer it, removes `to` first and says so.
fn replace(c: &Connection, from: &str, to: &str) -> Result<Replaced> {
    let mut posix = c.posix.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if matches!(*posix, PosixState::Untried) {
        *posix = match PosixRename::open(&c.session) {
            Ok(channel) => PosixState::Open(channel),
            Err(err) => PosixState::Unavailable(format!("no second SFTP channel: {err}")),
        };
    }
    let refusal = match &*posix {
        PosixState::Open(channel) => match channel.rename(from, to) {
            Ok(()) => return Ok(Replaced::Atomically),
            // OpenSSH answers an extension it lacks with OP_UNSUPPORTED, and one its
            // `sftp-server -P` denies with PERMISSION_DENIED; the plain rename below then
            // tells a real permission problem apart.
            Err(err) if matches!(err.code(), ErrorCode::SFTP(OP_UNSUPPORTED | PERMISSION_DENIED)) => err.to_string(),
            Err(err) => {
                // A timeout or a cut connection can leave the channel waiting for the
                // answer to this request: it is not used again.
                if !matches!(err.code(), ErrorCode::SFTP(_)) {
                    *posix = PosixState::Untried;
                }
                return Err(ssh_error(err, &format!("replacing {to} with {from}")));
            }
        },
        PosixState::Unavailable(why) => why.clone(),
        PosixState::Untried => "posix-rename not tried".to_owned(),
    };
    drop(posix);
    tracing::warn!(
        remote = %to,
        refusal = %refusal,
        "the server does not offer posix-rename@openssh.com: removing the old file before renaming the new one, so \
         SAP can see no file for a moment"
    );
    match c.sftp.unlink(Path::new(to)) {
        Ok(()) => {}
        Err(err) if err.code() == ErrorCode::SFTP(NO_SUCH_FILE) => {}
        Err(err) => return Err(ssh_error(err, &format!("removing {to} to replace it"))),
    }
    c.sftp
        .rename(Path::new(from), Path::new(to), None)
        .map(|()| Replaced::RemovedFirst)
        .map_err(|e| ssh_error(e, &format!("renaming {from} to {to}")))
}

/// SSH_FX_PERMISSION_DENIED, SSH_FX_OP_UNSUPPORTED.
const PERMISSION_DENIED: i32 = 3;
const OP_UNSUPPORTED: i32 = 8;

mod raw {
    use std::os::raw::{c_char, c_int};

    extern "C" {
        /// libssh2 ≥ 1.11 (libssh2-sys 0.3.4 builds 1.11.x and links it); the `ssh2`
        /// crate does not bind it.
        pub fn libssh2_sftp_posix_rename_ex(
            sftp: *mut libssh2_sys::LIBSSH2_SFTP,
            source_filename: *const c_char,
            source_filename_len: usize,
            dest_filename: *const c_char,
            dest_filename_len: usize,
        ) -> c_int;
    }
}

/// An SFTP channel of its own on the session, for the one call `ssh2` lacks. `ssh2::Sftp`
/// hands out no raw pointer, so this opens a second channel with `libssh2_sftp_init` and
/// owns it. Every libssh2 call on it holds the session's lock (`Session::raw`), as `ssh2`'s
/// own calls do, so no two threads are ever inside libssh2 on this session at once; the
/// `Session` clone keeps the session alive until the channel is shut down.
struct PosixRename {
    session: Session,
    sftp: *mut libssh2_sys::LIBSSH2_SFTP,
}

// SAFETY: the pointer is used only under the session's lock (see above), never
// concurrently; libssh2 objects may move between threads when not used concurrently, as
// `ssh2::Sftp` (also `Send`) relies on.
unsafe impl Send for PosixRename {}

impl PosixRename {
    fn open(session: &Session) -> std::result::Result<Self, ssh2::Error> {
        let mut guard = session.raw();
        let raw_session: *mut libssh2_sys::LIBSSH2_SESSION = &mut *guard;
        // SAFETY: a live session (the guard borrows it), locked for the call.
        let sftp = unsafe { libssh2_sys::libssh2_sftp_init(raw_session) };
        if sftp.is_null() {
            return Err(ssh2::Error::last_session_error_raw(raw_session)
                .unwrap_or_else(|| ssh2::Error::new(ErrorCode::Session(-1), "opening an SFTP channel failed")));
        }
        drop(guard);
        Ok(Self { session: session.clone(), sftp })
    }

    fn rename(&self, from: &str, to: &str) -> std::result::Result<(), ssh2::Error> {
        let mut guard = self.session.raw();
        let raw_session: *mut libssh2_sys::LIBSSH2_SESSION = &mut *guard;
        // SAFETY: `self.sftp` is a live channel of this session (shut down only in Drop),
        // the names are valid for the given lengths, and the session is locked.
        let rc = unsafe {
            raw::libssh2_sftp_posix_rename_ex(self.sftp, from.as_ptr().cast(), from.len(), to.as_ptr().cast(), to.len())
        };
        match rc {
            0 => Ok(()),
            // LIBSSH2_ERROR_SFTP_PROTOCOL: the server answered with an SFTP status.
            -31 => {
                // SAFETY: as above.
                let status = unsafe { libssh2_sys::libssh2_sftp_last_error(self.sftp) };
                Err(ssh2::Error::from_errno(ErrorCode::SFTP(status as i32)))
            }
            _ => Err(ssh2::Error::from_session_error_raw(raw_session, rc)),
        }
    }
}

impl Drop for PosixRename {
    fn drop(&mut self) {
        let _guard = self.session.raw();
        // SAFETY: the channel is live and not used again; the session is locked and alive.
        unsafe {
            libssh2_sys::libssh2_sftp_shutdown(self.sftp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exported(chunks: &[&[u8]], open: bool) -> (Exported, Option<tokio::sync::mpsc::Sender<bytes::Bytes>>) {
        let (tx, rx) = tokio::sync::mpsc::channel(chunks.len().max(1));
        for chunk in chunks {
            tx.try_send(bytes::Bytes::copy_from_slice(chunk)).expect("room");
        }
        (Exported { chunks: rx, pending: bytes::Bytes::new() }, open.then_some(tx))
    }

    #[test]
    fn the_exports_chunks_fill_the_window_across_chunk_boundaries_and_empty_chunks() {
        let (mut source, _open) = exported(&[b"abc", b"", b"defgh", b"ij"], true);
        let mut into = [0u8; 4];
        assert_eq!(source.fill(&mut into, None).expect("fill"), (4, Flow::More));
        assert_eq!(&into, b"abcd");
        // What did not fit waits for the next fill; then nothing is at hand.
        let mut into = [0u8; 16];
        assert_eq!(source.fill(&mut into, None).expect("fill"), (6, Flow::Dry));
        assert_eq!(&into[..6], b"efghij");
    }

    #[test]
    fn a_chunk_larger_than_the_room_is_taken_in_parts_and_the_end_comes_after_its_last_byte() {
        let big: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let (mut source, _) = exported(&[&big], false);
        let mut taken = Vec::new();
        loop {
            let mut into = [0u8; 3_000];
            let (n, flow) = source.fill(&mut into, None).expect("fill");
            taken.extend_from_slice(&into[..n]);
            if flow == Flow::End {
                break;
            }
            assert_eq!(flow, Flow::More, "a closed channel with bytes pending is not dry");
        }
        assert_eq!(taken, big);
    }

    #[test]
    fn waiting_for_a_chunk_is_bounded_and_says_dry_when_none_came() {
        let (mut source, _open) = exported(&[], true);
        let started = std::time::Instant::now();
        assert_eq!(source.fill(&mut [0u8; 8], Some(Duration::from_millis(50))).expect("fill"), (0, Flow::Dry));
        assert!(started.elapsed() >= Duration::from_millis(50));
    }

    #[test]
    fn fingerprints_use_the_openssh_form_and_pins_are_normalised() {
        let hash = [0u8; 32];
        assert_eq!(fingerprint(&hash), "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
        assert_eq!(normalize_fingerprint(" AAAA= "), "SHA256:AAAA");
        assert_eq!(normalize_fingerprint("SHA256:AAAA"), "SHA256:AAAA");
    }
}
