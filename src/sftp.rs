//! SFTP delivery to an SAP system: pinned host key, upload to a temporary name, size check,
//! fsync, rename; the existing-file policy; libssh2 kept off the async executor.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD_NO_PAD;
use base64::Engine;
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};
use ssh2::{ErrorCode, HashType, OpenFlags, OpenType, Session, Sftp};

use crate::error::{Error, ErrorClass, Result, Step};
use crate::secrets::SftpCredentials;

/// What to do when the final file is already on the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExistingFilePolicy {
    /// Identical (size and SHA-256): recorded as delivered, nothing sent. Different: a
    /// permanent error, the remote file untouched.
    Fail,
    /// Removed and uploaded again, without reading it first.
    Overwrite,
    /// Identical: recorded as delivered. Different: removed and uploaded again.
    SkipIfIdentical,
}

impl std::str::FromStr for ExistingFilePolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fail" => Ok(Self::Fail),
            "overwrite" => Ok(Self::Overwrite),
            "skip-if-identical" => Ok(Self::SkipIfIdentical),
            other => Err(format!("{other:?} is not one of fail, overwrite, skip-if-identical")),
        }
    }
}

#[derive(Debug, Clone)]
pub struct SftpOptions {
    pub connect_timeout: Duration,
    /// libssh2's timeout for each blocking call.
    pub io_timeout: Duration,
    pub keepalive_interval: Duration,
    /// Bytes per SFTP write: libssh2 pipelines a large write into many requests in flight.
    pub write_chunk: usize,
    pub existing: ExistingFilePolicy,
    pub create_dir: bool,
}

impl Default for SftpOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(15),
            io_timeout: Duration::from_secs(60),
            keepalive_interval: Duration::from_secs(15),
            write_chunk: 1024 * 1024,
            existing: ExistingFilePolicy::Fail,
            create_dir: false,
        }
    }
}

/// The local file to deliver and what it must look like on arrival.
#[derive(Debug, Clone)]
pub struct Upload {
    pub local_path: PathBuf,
    pub file_name: String,
    pub bytes: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub remote_path: String,
    /// `false`: the identical file was already there.
    pub uploaded: bool,
}

/// OpenSSH's fingerprint form: `SHA256:` and the unpadded base64 of the key's SHA-256.
pub fn fingerprint(key_hash: &[u8]) -> String {
    format!("SHA256:{}", STANDARD_NO_PAD.encode(key_hash))
}

fn normalize_fingerprint(pinned: &str) -> String {
    let bare = pinned.trim().trim_start_matches("SHA256:").trim_end_matches('=');
    format!("SHA256:{bare}")
}

/// Delivers one file; libssh2 is blocking, so it runs on the blocking pool.
pub async fn deliver(credentials: SftpCredentials, options: SftpOptions, upload: Upload) -> Result<Delivery> {
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(|| deliver_blocking(&credentials, &options, &upload)))
        .await
        .map_err(|e| Error::transient(Step::Deliver, "the SFTP task stopped").caused_by(e))?
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
        .map_err(|e| Error::transient(Step::Deliver, format!("resolving {endpoint}")).caused_by(e))?
        .next()
        .ok_or_else(|| Error::transient(Step::Deliver, format!("{endpoint} resolves to no address")))?;
    let tcp = TcpStream::connect_timeout(&address, options.connect_timeout)
        .map_err(|e| Error::transient(Step::Deliver, format!("connecting to {endpoint}")).caused_by(e))?;
    let mut session = Session::new().map_err(|e| ssh_error(e, "starting an SSH session"))?;
    session.set_tcp_stream(tcp);
    session.set_timeout(options.io_timeout.as_millis().min(u32::MAX as u128) as u32);
    session.handshake().map_err(|e| ssh_error(e, &format!("SSH handshake with {endpoint}")))?;

    let offered = session
        .host_key_hash(HashType::Sha256)
        .map(fingerprint)
        .ok_or_else(|| Error::permanent(Step::Deliver, format!("{endpoint} offered no host key")))?;
    let pinned = normalize_fingerprint(&credentials.host_key_sha256);
    if offered != pinned {
        return Err(Error::permanent(
            Step::Deliver,
            format!("host key of {endpoint} is {offered}, not the pinned {pinned}: nothing was sent"),
        ));
    }
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
            session
                .userauth_password(user, password.expose_secret())
                .map_err(|e| ssh_error(e, &format!("{endpoint} refused the password of {user}")))?;
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

fn deliver_blocking(credentials: &SftpCredentials, options: &SftpOptions, upload: &Upload) -> Result<Delivery> {
    let session = connect(credentials, options)?;
    let sftp = session.sftp().map_err(|e| ssh_error(e, "opening the SFTP channel"))?;
    let dir = credentials.remote_dir.trim_end_matches('/');
    if options.create_dir {
        create_dir_all(&sftp, dir)?;
    }
    let final_path = format!("{dir}/{}", upload.file_name);
    // Unique per attempt, so two workers on the same job never write into one file; hidden
    // and not `.csv`, so SAP's pickup never takes it.
    let temp_prefix = format!(".{}.", upload.file_name);
    let temp_path = format!("{dir}/{temp_prefix}{:08x}.part", fastrand::u32(..));
    let final_ref = Path::new(&final_path);

    if sftp.stat(final_ref).is_ok() {
        let replace = match options.existing {
            ExistingFilePolicy::Overwrite => true,
            ExistingFilePolicy::Fail | ExistingFilePolicy::SkipIfIdentical => {
                if remote_is_identical(&sftp, final_ref, upload)? {
                    tracing::info!(remote = %final_path, "the identical file is already delivered");
                    let _ = session.disconnect(None, "done", None);
                    return Ok(Delivery { remote_path: final_path, uploaded: false });
                }
                options.existing == ExistingFilePolicy::SkipIfIdentical
            }
        };
        if !replace {
            return Err(Error::permanent(
                Step::Deliver,
                format!("{final_path} exists with other content; policy 'fail' leaves it untouched"),
            ));
        }
        tracing::warn!(remote = %final_path, policy = ?options.existing, "removing the existing remote file to replace it");
        sftp.unlink(final_ref).map_err(|e| ssh_error(e, &format!("removing {final_path} to overwrite it")))?;
    }

    remove_stale_temporaries(&sftp, dir, &temp_prefix);
    write_remote(&session, &sftp, &temp_path, upload, options)?;

    let size =
        sftp.stat(Path::new(&temp_path)).map_err(|e| ssh_error(e, &format!("checking {temp_path}")))?.size.unwrap_or(0);
    if size != upload.bytes {
        let _ = sftp.unlink(Path::new(&temp_path));
        return Err(Error::transient(
            Step::Deliver,
            format!("{temp_path} holds {size} bytes after upload, {} sent", upload.bytes),
        ));
    }
    if let Err(err) = sftp.rename(Path::new(&temp_path), final_ref, None) {
        // OpenSSH (SFTP v3) refuses to rename onto an existing file: someone else delivered.
        let raced = sftp.stat(final_ref).is_ok();
        let _ = sftp.unlink(Path::new(&temp_path));
        if raced && remote_is_identical(&sftp, final_ref, upload)? {
            return Ok(Delivery { remote_path: final_path, uploaded: false });
        }
        return Err(ssh_error(err, &format!("renaming {temp_path} to {final_path}")));
    }
    let _ = session.disconnect(None, "delivered", None);
    Ok(Delivery { remote_path: final_path, uploaded: true })
}

fn write_remote(session: &Session, sftp: &Sftp, temp_path: &str, upload: &Upload, options: &SftpOptions) -> Result<()> {
    let mut local = std::fs::File::open(&upload.local_path).map_err(|e| {
        Error::transient(Step::Deliver, format!("opening {}", upload.local_path.display())).caused_by(e)
    })?;
    let mut remote = sftp
        .open_mode(
            Path::new(temp_path),
            OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::TRUNCATE,
            0o640,
            OpenType::File,
        )
        .map_err(|e| ssh_error(e, &format!("creating {temp_path}")))?;
    let mut buffer = vec![0u8; options.write_chunk.max(32 * 1024)];
    let mut last_keepalive = Instant::now();
    loop {
        let filled = fill(&mut local, &mut buffer).map_err(|e| {
            Error::transient(Step::Deliver, format!("reading {}", upload.local_path.display())).caused_by(e)
        })?;
        if filled == 0 {
            break;
        }
        // write_all hands libssh2 the unacknowledged rest of the same buffer after a short
        // write, as its pipelining requires; the buffer is refilled only after that.
        remote
            .write_all(&buffer[..filled])
            .map_err(|e| Error::transient(Step::Deliver, format!("writing {temp_path}")).caused_by(e))?;
        if last_keepalive.elapsed() >= options.keepalive_interval {
            let _ = session.keepalive_send();
            last_keepalive = Instant::now();
        }
    }
    if let Err(err) = remote.fsync() {
        tracing::debug!(error = %err, "the server offers no fsync; relying on the size check");
    }
    Ok(())
}

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

fn remote_is_identical(sftp: &Sftp, path: &Path, upload: &Upload) -> Result<bool> {
    let what = format!("reading back {}", path.display());
    let size = sftp.stat(path).map_err(|e| ssh_error(e, &what))?.size.unwrap_or(0);
    if size != upload.bytes {
        return Ok(false);
    }
    let mut remote = sftp.open(path).map_err(|e| ssh_error(e, &what))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 256 * 1024];
    loop {
        let n = remote.read(&mut buffer).map_err(|e| Error::transient(Step::Deliver, what.clone()).caused_by(e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hex::encode(hasher.finalize()) == upload.sha256)
}

/// Temporaries of this file left by attempts whose connection was cut, once they are old
/// enough that no attempt can still be writing them.
fn remove_stale_temporaries(sftp: &Sftp, dir: &str, prefix: &str) {
    const STALE_AFTER_SECS: u64 = 30 * 60;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let Ok(entries) = sftp.readdir(Path::new(dir)) else { return };
    for (path, stat) in entries {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let stale = stat.mtime.is_some_and(|mtime| now.saturating_sub(mtime) > STALE_AFTER_SECS);
        if name.starts_with(prefix) && name.ends_with(".part") && stale {
            tracing::info!(remote = %path.display(), "removing a stale temporary of a cut upload");
            let _ = sftp.unlink(&path);
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_use_the_openssh_form_and_pins_are_normalised() {
        let hash = [0u8; 32];
        assert_eq!(fingerprint(&hash), "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
        assert_eq!(normalize_fingerprint(" AAAA= "), "SHA256:AAAA");
        assert_eq!(normalize_fingerprint("SHA256:AAAA"), "SHA256:AAAA");
    }

    #[test]
    fn existing_file_policies_parse_from_their_documented_names() {
        assert_eq!("skip-if-identical".parse(), Ok(ExistingFilePolicy::SkipIfIdentical));
        assert!("replace".parse::<ExistingFilePolicy>().is_err());
    }
}
