//! The export's bytes split on their way: each CSV, while it is written, handed in chunks to
//! several bounded streams (the staging upload and the SFTP temporary); a stream that stalls
//! past its bound is dropped and never holds the export.

use std::future::Future;
use std::io::Write;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;

/// One CSV on its way while the export writes it: the same bytes, in order, to the staging
/// upload and to the SFTP temporary. A channel that ends without `Outlet::finish` having
/// been called belongs to an export that failed.
#[derive(Debug)]
pub struct StreamedFile {
    pub worksheet: String,
    pub file_name: String,
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

    /// The writer for a file that starts now.
    pub fn open(&self, worksheet: &str, file_name: &str) -> Outlet {
        let Some(files) = &self.files else { return Outlet::default() };
        let (staging_tx, staging) = mpsc::channel(self.depth);
        let (remote_tx, remote) = mpsc::channel(self.depth);
        let announced = files.send(StreamedFile {
            worksheet: worksheet.to_owned(),
            file_name: file_name.to_owned(),
            staging,
            remote,
        });
        if announced.is_err() {
            return Outlet::default();
        }
        Outlet {
            senders: vec![
                Destination { name: "staging", sender: staging_tx, waited: Duration::ZERO },
                Destination { name: "sftp", sender: remote_tx, waited: Duration::ZERO },
            ],
            buffer: BytesMut::with_capacity(self.chunk_bytes),
            chunk_bytes: self.chunk_bytes,
            stall: self.stall,
            file_name: file_name.to_owned(),
        }
    }
}

/// A blocking writer that hands its bytes on in chunks to every destination still
/// listening. A destination that stops listening (its upload failed), or has kept the
/// writer waiting for `stall` in all (its upload is stuck, or slower than the export), is
/// dropped: its channel then ends short of the file, which its stream sees by the byte
/// count. The writer itself never fails and waits at most `stall` per destination and
/// file, so neither staging nor SFTP can fail or hold up the export.
#[derive(Debug, Default)]
pub struct Outlet {
    senders: Vec<Destination>,
    buffer: BytesMut,
    chunk_bytes: usize,
    stall: Duration,
    file_name: String,
}

impl Outlet {
    fn hand_on(&mut self) {
        if self.buffer.is_empty() {
            return;
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
    }

    /// The file is complete: the last bytes go, and the channels end.
    pub fn finish(mut self) {
        self.hand_on();
    }

    /// Destinations still listening.
    pub fn listening(&self) -> usize {
        self.senders.len()
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
        if self.senders.is_empty() {
            return Ok(buf.len());
        }
        // A chunk is filled in place, in a buffer allocated at its full size: grown write by
        // write it would be copied on each doubling. What does not fit goes in the next one
        // (chunks may so be a little short; staging regroups them into parts).
        if self.buffer.capacity() - self.buffer.len() < buf.len() {
            self.hand_on();
            self.buffer.reserve(self.chunk_bytes.max(buf.len()));
        }
        self.buffer.extend_from_slice(buf);
        if self.buffer.len() >= self.chunk_bytes {
            self.hand_on();
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
        let mut outlet = outlets.open("Sheet", "sheet.csv");
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
        outlet.finish();
        assert_eq!(reader.join().unwrap(), data);
        drop(remote);
    }

    #[test]
    fn a_destination_slower_than_the_writer_is_dropped_once_it_kept_the_writer_waiting_the_bound_in_all() {
        let (outlets, mut announced) = Outlets::new(1, 1, Duration::from_millis(50));
        let mut outlet = outlets.open("Sheet", "sheet.csv");
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
        outlet.finish();
        let got = reader.join().unwrap();
        assert!(got < data.len(), "it got {got} of {} bytes: its stream ends short", data.len());
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
