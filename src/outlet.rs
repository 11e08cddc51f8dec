//! The export's bytes on their way: each file, while it is written, goes into its spool
//! file and, chunk by chunk, to several bounded streams (the staging upload and the SFTP
//! temporary); a stream that stalls past its bound is dropped and never holds the export.

use std::fs::File;
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;

/// The spool's write size when no stream listens: large writes, few system calls.
const SPOOL_CHUNK_BYTES: usize = 256 * 1024;

/// One file on its way while the export writes it: the same bytes, in order, to the staging
/// upload and to the SFTP temporary. Every chunk is in the spool file before it is sent, so
/// a stream may read what it was sent from `spool` rather than hold it. A channel that ends
/// without `Outlet::finish` having been called belongs to an export that failed.
#[derive(Debug)]
pub struct StreamedFile {
    pub worksheet: String,
    pub file_name: String,
    pub spool: PathBuf,
    pub staging: mpsc::Receiver<Bytes>,
    pub remote: mpsc::Receiver<Bytes>,
}

/// Where the export announces each file it starts writing; `none()` streams nothing.
#[derive(Debug, Clone, Default)]
pub struct Outlets {
    files: Option<mpsc::UnboundedSender<StreamedFile>>,
    chunk_bytes: usize,
    depth: usize,
    stall: Duration,
}

impl Outlets {
    pub fn none() -> Self {
        Self::default()
    }

    /// Files announced on the receiver; bytes handed on in chunks of `chunk_bytes`, at most
    /// `depth` chunks waiting per destination; a destination that has kept the writer
    /// waiting `stall` in all is dropped (its stream then falls back), so the export never
    /// waits longer on it.
    pub fn new(chunk_bytes: usize, depth: usize, stall: Duration) -> (Self, mpsc::UnboundedReceiver<StreamedFile>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Self { files: Some(tx), chunk_bytes: chunk_bytes.max(1), depth: depth.max(1), stall }, rx)
    }

    /// The writer for a file that starts now, spooled to `spool` (created by
    /// `Outlet::create_spool`).
    pub fn open(&self, worksheet: &str, file_name: &str, spool: &Path) -> Outlet {
        let mut outlet = Outlet {
            spool_path: spool.to_owned(),
            spool: None,
            senders: Vec::new(),
            buffer: BytesMut::new(),
            chunk_bytes: SPOOL_CHUNK_BYTES,
            stall: self.stall,
            file_name: file_name.to_owned(),
        };
        let Some(files) = &self.files else { return outlet };
        let (staging_tx, staging) = mpsc::channel(self.depth);
        let (remote_tx, remote) = mpsc::channel(self.depth);
        let announced = files.send(StreamedFile {
            worksheet: worksheet.to_owned(),
            file_name: file_name.to_owned(),
            spool: spool.to_owned(),
            staging,
            remote,
        });
        if announced.is_ok() {
            outlet.chunk_bytes = self.chunk_bytes;
            outlet.senders = vec![
                Destination { name: "staging", sender: staging_tx, waited: Duration::ZERO },
                Destination { name: "sftp", sender: remote_tx, waited: Duration::ZERO },
            ];
        }
        outlet
    }
}

/// A blocking writer that puts its bytes in the spool file and hands them on in chunks to
/// every destination still listening; one buffer serves both, so a byte is copied once on
/// its way. A destination that stops listening (its upload failed), or has kept the writer
/// waiting for `stall` in all (its upload is stuck, or slower than the export), is dropped:
/// its channel then ends short of the file, which its stream sees by the byte count. Only
/// the spool file can fail a write; the writer waits at most `stall` per destination and
/// file, so neither staging nor SFTP can fail or hold up the export.
#[derive(Debug)]
pub struct Outlet {
    spool_path: PathBuf,
    spool: Option<Spool>,
    senders: Vec<Destination>,
    buffer: BytesMut,
    chunk_bytes: usize,
    stall: Duration,
    file_name: String,
}

impl Outlet {
    /// Creates (or empties) the spool file the bytes go to.
    pub fn create_spool(&mut self) -> std::io::Result<()> {
        self.spool = Some(Spool(Box::new(File::create(&self.spool_path)?)));
        Ok(())
    }

    /// The spool written through `writer` (a test's, to slow it down).
    #[cfg(test)]
    fn spool_through(&mut self, writer: impl Write + Send + 'static) {
        self.spool = Some(Spool(Box::new(writer)));
    }

    /// The buffered bytes into the spool file, then to the destinations: a chunk a stream
    /// receives is always in the spool already.
    fn hand_on(&mut self) -> std::io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let spool = self.spool.as_mut().ok_or_else(|| {
            std::io::Error::other(format!("the spool file {} was not created", self.spool_path.display()))
        })?;
        spool.0.write_all(&self.buffer)?;
        if self.senders.is_empty() {
            self.buffer.clear();
            return Ok(());
        }
        let chunk = self.buffer.split().freeze();
        let (stall, file_name) = (self.stall, &self.file_name);
        self.senders.retain_mut(|destination| {
            let started = std::time::Instant::now();
            let handed = send_within(&destination.sender, chunk.clone(), stall.saturating_sub(destination.waited));
            destination.waited += started.elapsed();
            match handed {
                Handed::Sent => true,
                Handed::Closed => false,
                Handed::Stalled => {
                    tracing::warn!(
                        file = %file_name,
                        destination = destination.name,
                        stall_ms = stall.as_millis() as u64,
                        "a stream kept the export waiting too long; it stops here and the file goes the ordinary way"
                    );
                    false
                }
            }
        });
        Ok(())
    }

    /// The file is complete and verified: the last bytes go into the spool and on, and the
    /// channels end.
    pub fn finish(mut self) -> std::io::Result<()> {
        self.hand_on()
    }

    /// Destinations still listening.
    pub fn listening(&self) -> usize {
        self.senders.len()
    }
}

/// Where the bytes are spooled: the file, or a test's writer in front of it.
struct Spool(Box<dyn Write + Send>);

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Spool")
    }
}

#[derive(Debug)]
struct Destination {
    name: &'static str,
    sender: mpsc::Sender<Bytes>,
    /// How long the writer has waited on it so far.
    waited: Duration,
}

enum Handed {
    Sent,
    Closed,
    Stalled,
}

/// Sends without waiting when there is room, else waits at most `bound` for it. Blocks the
/// calling thread (parked, not spinning): call it from a blocking thread.
fn send_within(sender: &mpsc::Sender<Bytes>, chunk: Bytes, bound: Duration) -> Handed {
    use mpsc::error::TrySendError;
    match sender.try_send(chunk) {
        Ok(()) => Handed::Sent,
        Err(TrySendError::Closed(_)) => Handed::Closed,
        Err(TrySendError::Full(chunk)) => match block_within(sender.reserve(), bound) {
            Some(Ok(permit)) => {
                permit.send(chunk);
                Handed::Sent
            }
            Some(Err(_)) => Handed::Closed,
            None => Handed::Stalled,
        },
    }
}

/// Drives `future` on this (blocking) thread until it completes or `bound` passes; `None`
/// on the bound. The thread sleeps between wake-ups. Channel futures need no runtime, so a
/// blocking thread can wait on one with a limit, which `blocking_send`/`blocking_recv`
/// cannot.
pub fn block_within<F: Future>(future: F, bound: Duration) -> Option<F::Output> {
    use std::sync::Arc;
    use std::task::{Context, Poll, Wake, Waker};

    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.unpark();
        }
    }

    let until = std::time::Instant::now() + bound;
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return Some(output);
        }
        let now = std::time::Instant::now();
        if now >= until {
            return None;
        }
        // A spurious wake-up only polls again.
        std::thread::park_timeout(until - now);
    }
}

impl Write for Outlet {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // A chunk is filled in place, in a buffer allocated at its full size: grown write by
        // write it would be copied on each doubling. What does not fit goes in the next one
        // (chunks may so be a little short; staging counts them into parts).
        if self.buffer.capacity() - self.buffer.len() < buf.len() {
            self.hand_on()?;
            self.buffer.reserve(self.chunk_bytes.max(buf.len()));
        }
        self.buffer.extend_from_slice(buf);
        if self.buffer.len() >= self.chunk_bytes {
            self.hand_on()?;
        }
        Ok(buf.len())
    }

    /// Chunks go at their size or at `finish`: a flush sends nothing early.
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_destination_that_stays_full_is_dropped_after_the_bound_and_the_other_gets_every_byte() {
        let (outlets, mut announced) = Outlets::new(4, 1, Duration::from_millis(30));
        let dir = tempfile::tempdir().unwrap();
        let mut outlet = outlets.open("Sheet", "sheet.csv", &dir.path().join("sheet.csv"));
        outlet.create_spool().unwrap();
        let StreamedFile { mut staging, remote, .. } = announced.try_recv().expect("announced");
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            while let Some(chunk) = staging.blocking_recv() {
                got.extend_from_slice(&chunk);
            }
            got
        });
        let data: Vec<u8> = (0..200u8).collect();
        for piece in data.chunks(3) {
            outlet.write_all(piece).unwrap();
        }
        // `remote` is never read: held, not dropped, as by a stalled upload.
        assert_eq!(outlet.listening(), 1, "the stalled destination is dropped, the live one kept");
        outlet.finish().unwrap();
        assert_eq!(reader.join().unwrap(), data);
        drop(remote);
    }

    #[test]
    fn a_destination_slower_than_the_writer_is_dropped_once_it_kept_the_writer_waiting_the_bound_in_all() {
        let (outlets, mut announced) = Outlets::new(1, 1, Duration::from_millis(50));
        let dir = tempfile::tempdir().unwrap();
        let mut outlet = outlets.open("Sheet", "sheet.csv", &dir.path().join("sheet.csv"));
        outlet.create_spool().unwrap();
        let StreamedFile { mut staging, remote, .. } = announced.try_recv().expect("announced");
        drop(remote);
        // Each chunk is taken, but 5 ms late: no single wait is long, their sum is.
        let reader = std::thread::spawn(move || {
            let mut got = 0;
            while let Some(chunk) = staging.blocking_recv() {
                got += chunk.len();
                std::thread::sleep(Duration::from_millis(5));
            }
            got
        });
        let data = vec![7u8; 400];
        for piece in data.chunks(1) {
            outlet.write_all(piece).unwrap();
        }
        assert_eq!(outlet.listening(), 0, "the slow destination is dropped");
        outlet.finish().unwrap();
        assert_eq!(std::fs::read(dir.path().join("sheet.csv")).unwrap(), data, "the spool has every byte all the same");
        let got = reader.join().unwrap();
        assert!(got < data.len(), "it got {got} of {} bytes: its stream ends short", data.len());
    }

    /// A spool file written late: each write waits first, so a chunk sent before its write
    /// would reach its stream before the spool had it.
    struct SlowSpool(File);

    impl Write for SlowSpool {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            std::thread::sleep(Duration::from_millis(5));
            self.0.write(buf)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            self.0.flush()
        }
    }

    #[test]
    fn every_chunk_a_stream_receives_is_in_the_spool_already_and_the_spool_is_the_whole_file() {
        let (outlets, mut announced) = Outlets::new(50, 64, Duration::from_secs(5));
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path().join("sheet.csv");
        let mut outlet = outlets.open("Sheet", "sheet.csv", &spool);
        outlet.spool_through(SlowSpool(File::create(&spool).unwrap()));
        let StreamedFile { mut staging, remote, spool: announced_spool, .. } = announced.try_recv().expect("announced");
        assert_eq!(announced_spool, spool);
        drop(remote);
        let data: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let reader = std::thread::spawn(move || {
            let mut received = Vec::new();
            while let Some(chunk) = staging.blocking_recv() {
                received.extend_from_slice(&chunk);
                let on_disk = std::fs::read(&announced_spool).unwrap();
                assert!(on_disk.len() >= received.len(), "a chunk arrived before the spool had it");
                assert_eq!(on_disk[..received.len()], received[..]);
            }
            received
        });
        for piece in data.chunks(7) {
            outlet.write_all(piece).unwrap();
        }
        outlet.finish().unwrap();
        assert_eq!(reader.join().unwrap(), data);
        assert_eq!(std::fs::read(&spool).unwrap(), data);
    }

    #[test]
    fn with_no_stream_the_spool_gets_every_byte_and_an_uncreated_spool_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path().join("plain.csv");
        let mut outlet = Outlets::none().open("Sheet", "plain.csv", &spool);
        let err = outlet.write_all(&vec![1u8; SPOOL_CHUNK_BYTES + 1]).unwrap_err();
        assert!(err.to_string().contains("plain.csv"), "{err}");

        let mut outlet = Outlets::none().open("Sheet", "plain.csv", &spool);
        outlet.create_spool().unwrap();
        let data: Vec<u8> = (0..3 * SPOOL_CHUNK_BYTES + 17).map(|i| (i % 251) as u8).collect();
        for piece in data.chunks(1000) {
            outlet.write_all(piece).unwrap();
        }
        assert_eq!(outlet.listening(), 0);
        outlet.finish().unwrap();
        assert_eq!(std::fs::read(&spool).unwrap(), data);
    }

    #[test]
    fn a_wait_within_a_bound_returns_what_arrives_in_time_and_none_after() {
        let (tx, mut rx) = mpsc::channel::<u8>(1);
        assert_eq!(block_within(rx.recv(), Duration::from_millis(20)), None);
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            tx.blocking_send(7).unwrap();
        });
        assert_eq!(block_within(rx.recv(), Duration::from_secs(5)), Some(Some(7)));
        sender.join().unwrap();
        assert_eq!(block_within(rx.recv(), Duration::from_secs(5)), Some(None), "the channel ended");
    }
}
