//! The server side of a SPDY/3.1 session: accepts the client's streams and moves their
//! bytes, the way `moby/spdystream` does inside the real kubelet.
//!
//! One task reads frames and dispatches them to streams; one task owns the write half
//! and the outbound compression context (header blocks must be compressed in the order
//! they hit the wire, so all frames funnel through it). Stream users get an
//! [`IncomingStream`]: a receiver of the client's bytes (closed at the client's FIN or
//! reset) and a [`StreamHandle`] to send, half-close or reset.
//!
//! Flow control: spdystream — kubectl's side and the real kubelet's — implements none.
//! It never sends WINDOW_UPDATE and ignores those it gets; backpressure is TCP's (its
//! frame reader blocks while a stream's reader is busy). We therefore never stop sending
//! for lack of window (a spdystream peer would never open it again), but we do announce
//! consumed bytes with WINDOW_UPDATE as a SPDY/3 receiver should; spdystream ignores them
//! and a peer that does flow control gets the credit it needs.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::codec::{FrameDecoder, FrameEncoder};
use super::frame::{Frame, Headers, RstStatus};
use crate::{Error, Result};

/// SPDY/3 initial per-stream window (64 KiB); WINDOW_UPDATE goes out after half of it.
pub const INITIAL_WINDOW: u32 = 64 * 1024;

/// Chunks of client data buffered per stream before the frame reader waits (the same
/// head-of-line backpressure spdystream applies with its unbuffered channels).
const STREAM_BUFFER: usize = 16;

/// Frames queued for the writer task.
const WRITE_QUEUE: usize = 256;

/// A stream the client opened and we accepted (SYN_REPLY already queued).
#[derive(Debug)]
pub struct IncomingStream<M> {
    /// What the accept callback extracted from the stream's headers.
    pub meta: M,
    /// The SYN_STREAM headers.
    pub headers: Headers,
    /// The client's bytes; `None` after its FIN, a reset or the end of the session.
    pub data: mpsc::Receiver<Bytes>,
    /// Our side of the stream.
    pub handle: StreamHandle,
}

/// Sends on a stream; cheap to clone.
#[derive(Debug, Clone)]
pub struct StreamHandle {
    id: u32,
    frames: mpsc::Sender<Frame>,
    state: Arc<StreamState>,
}

#[derive(Debug)]
struct StreamState {
    /// Cancelled when the client resets the stream or the session ends.
    reset: CancellationToken,
    /// We sent FIN or RST: nothing more goes out.
    local_done: AtomicBool,
    /// Bytes consumed since the last WINDOW_UPDATE.
    unacked: AtomicU32,
}

impl StreamHandle {
    /// The SPDY stream id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Cancelled when the peer resets this stream or the session is gone: stop work.
    pub fn reset_token(&self) -> &CancellationToken {
        &self.state.reset
    }

    /// Sends bytes (one DATA frame per call; callers send reads of at most 64 KiB).
    pub async fn send(&self, data: Bytes) -> Result<()> {
        if self.state.local_done.load(Ordering::Acquire) || self.state.reset.is_cancelled() {
            return Err(Error::ConnectionClosed);
        }
        self.frames
            .send(Frame::Data {
                stream_id: self.id,
                fin: false,
                data,
            })
            .await
            .map_err(|_| Error::ConnectionClosed)
    }

    /// Half-closes our side (empty DATA frame with FIN); later calls do nothing.
    pub async fn finish(&self) {
        if self.state.local_done.swap(true, Ordering::AcqRel) || self.state.reset.is_cancelled() {
            return;
        }
        let fin = Frame::Data {
            stream_id: self.id,
            fin: true,
            data: Bytes::new(),
        };
        // A failed send means the session is gone; nothing left to tell the peer.
        let _ = self.frames.send(fin).await;
    }

    /// Aborts the stream in both directions (RST_STREAM); later calls do nothing.
    pub async fn reset(&self, status: RstStatus) {
        let already = self.state.local_done.swap(true, Ordering::AcqRel);
        let peer_reset = self.state.reset.is_cancelled();
        self.state.reset.cancel();
        if already || peer_reset {
            return;
        }
        let _ = self
            .frames
            .send(Frame::RstStream {
                stream_id: self.id,
                status,
            })
            .await;
    }

    /// Records that `n` received bytes were consumed; sends WINDOW_UPDATE every half
    /// window.
    pub async fn consumed(&self, n: usize) {
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        let total = self
            .state
            .unacked
            .fetch_add(n, Ordering::AcqRel)
            .saturating_add(n);
        if total >= INITIAL_WINDOW / 2 {
            let delta = self.state.unacked.swap(0, Ordering::AcqRel);
            if delta > 0 && !self.state.reset.is_cancelled() {
                let _ = self
                    .frames
                    .send(Frame::WindowUpdate {
                        stream_id: self.id,
                        delta,
                    })
                    .await;
            }
        }
    }
}

/// Reader-side bookkeeping for one stream.
struct Entry {
    data: Option<mpsc::Sender<Bytes>>,
    state: Arc<StreamState>,
}

impl Entry {
    /// Nothing more can happen on this stream in either direction.
    fn finished(&self) -> bool {
        self.data.is_none()
            && (self.state.local_done.load(Ordering::Acquire) || self.state.reset.is_cancelled())
    }
}

/// Decides whether to accept a new stream from its headers: `Err(reason)` resets it
/// (RST_STREAM CANCEL, like the kubelet rejecting a port-forward stream).
pub trait Acceptor<M>: Send + 'static {
    /// Inspect a SYN_STREAM's headers.
    fn accept(&mut self, stream_id: u32, headers: &Headers) -> Result<M, String>;
}

impl<M, F> Acceptor<M> for F
where
    F: FnMut(u32, &Headers) -> Result<M, String> + Send + 'static,
{
    fn accept(&mut self, stream_id: u32, headers: &Headers) -> Result<M, String> {
        self(stream_id, headers)
    }
}

/// Runs a server session over an upgraded connection until the client goes away or
/// `shutdown` fires. Accepted streams are sent to `streams`; the session ends early if
/// that receiver is dropped.
pub async fn run<IO, M, A>(
    io: IO,
    mut acceptor: A,
    streams: mpsc::Sender<IncomingStream<M>>,
    shutdown: CancellationToken,
) -> Result<()>
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
    M: Send + 'static,
    A: Acceptor<M>,
{
    let (read_half, write_half) = tokio::io::split(io);
    let mut reader = FramedRead::new(read_half, FrameDecoder::new());
    let (frames_tx, frames_rx) = mpsc::channel::<Frame>(WRITE_QUEUE);
    let writer_dead = CancellationToken::new();
    let writer = tokio::spawn(write_frames(
        FramedWrite::new(write_half, FrameEncoder::new()?),
        frames_rx,
        writer_dead.clone(),
    ));

    let mut table: HashMap<u32, Entry> = HashMap::new();
    let mut last_stream_id = 0u32;
    let mut went_away = false;
    let result = loop {
        let frame = tokio::select! {
            frame = reader.next() => frame,
            () = shutdown.cancelled() => {
                let _ = frames_tx
                    .send(Frame::GoAway { last_good_stream_id: last_stream_id, status: 0 })
                    .await;
                break Ok(());
            }
            () = writer_dead.cancelled() => break Err(Error::ConnectionClosed),
        };
        let frame = match frame {
            None => break Ok(()),
            Some(Err(e)) => {
                // Tell the peer why before hanging up (GOAWAY PROTOCOL_ERROR).
                let _ = frames_tx
                    .send(Frame::GoAway {
                        last_good_stream_id: last_stream_id,
                        status: 1,
                    })
                    .await;
                break Err(e);
            }
            Some(Ok(frame)) => frame,
        };
        match frame {
            Frame::SynStream {
                stream_id,
                fin,
                headers,
                ..
            } => {
                table.retain(|_, e| !e.finished());
                if went_away {
                    send(
                        &frames_tx,
                        Frame::RstStream {
                            stream_id,
                            status: RstStatus::RefusedStream,
                        },
                    )
                    .await;
                    continue;
                }
                // spdystream: ids must grow; a smaller or repeated id is a protocol error.
                if stream_id % 2 == 0 || stream_id <= last_stream_id {
                    warn!(
                        stream_id,
                        last_stream_id, "spdy: invalid stream id from client"
                    );
                    send(
                        &frames_tx,
                        Frame::RstStream {
                            stream_id,
                            status: RstStatus::ProtocolError,
                        },
                    )
                    .await;
                    continue;
                }
                last_stream_id = stream_id;
                let meta = match acceptor.accept(stream_id, &headers) {
                    Ok(meta) => meta,
                    Err(reason) => {
                        warn!(stream_id, %reason, "spdy: stream rejected");
                        send(
                            &frames_tx,
                            Frame::RstStream {
                                stream_id,
                                status: RstStatus::Cancel,
                            },
                        )
                        .await;
                        continue;
                    }
                };
                let state = Arc::new(StreamState {
                    reset: shutdown.child_token(),
                    local_done: AtomicBool::new(false),
                    unacked: AtomicU32::new(0),
                });
                let (data_tx, data_rx) = mpsc::channel(STREAM_BUFFER);
                let handle = StreamHandle {
                    id: stream_id,
                    frames: frames_tx.clone(),
                    state: state.clone(),
                };
                send(
                    &frames_tx,
                    Frame::SynReply {
                        stream_id,
                        fin: false,
                        headers: Headers::new(),
                    },
                )
                .await;
                table.insert(
                    stream_id,
                    Entry {
                        data: (!fin).then_some(data_tx),
                        state,
                    },
                );
                let incoming = IncomingStream {
                    meta,
                    headers,
                    data: data_rx,
                    handle,
                };
                if streams.send(incoming).await.is_err() {
                    break Ok(());
                }
            }
            Frame::Data {
                stream_id,
                fin,
                data,
            } => {
                let Some(entry) = table.get_mut(&stream_id) else {
                    // Late data for a stream we already forgot: spdystream drops it too.
                    debug!(
                        stream_id,
                        len = data.len(),
                        "spdy: data for unknown stream dropped"
                    );
                    continue;
                };
                if !data.is_empty()
                    && let Some(tx) = &entry.data
                {
                    let delivered = tokio::select! {
                        r = tx.send(data) => r.is_ok(),
                        () = entry.state.reset.cancelled() => false,
                    };
                    if !delivered {
                        // The stream's reader is gone: drop what it can no longer take.
                        entry.data = None;
                    }
                }
                if fin {
                    entry.data = None;
                }
            }
            Frame::RstStream { stream_id, status } => {
                if let Some(entry) = table.remove(&stream_id) {
                    debug!(stream_id, ?status, "spdy: client reset stream");
                    entry.state.reset.cancel();
                }
            }
            Frame::Headers { stream_id, fin, .. } => {
                if fin && let Some(entry) = table.get_mut(&stream_id) {
                    entry.data = None;
                }
            }
            Frame::Ping { id } => {
                // Odd ids are the client's pings: echo. Even ids would answer ours; we
                // send none.
                if id % 2 == 1 {
                    send(&frames_tx, Frame::Ping { id }).await;
                }
            }
            Frame::GoAway {
                last_good_stream_id,
                status,
            } => {
                debug!(last_good_stream_id, status, "spdy: client sent GOAWAY");
                went_away = true;
            }
            Frame::Settings { entries, .. } => debug!(?entries, "spdy: client settings"),
            Frame::WindowUpdate { stream_id, delta } => {
                debug!(
                    stream_id,
                    delta, "spdy: window update (no send-side flow control)"
                );
            }
            Frame::SynReply { stream_id, .. } => {
                debug!(
                    stream_id,
                    "spdy: unexpected SYN_REPLY ignored (we open no streams)"
                );
            }
            Frame::Unknown { kind } => debug!(kind, "spdy: unknown control frame ignored"),
        }
    };

    // The session is over: every stream's user must stop (their handles then drop,
    // which ends the writer once it has flushed what is queued). Streams not yet taken
    // from the channel are released with it.
    drop(streams);
    for entry in table.into_values() {
        entry.state.reset.cancel();
    }
    drop(frames_tx);
    match writer.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => debug!(error = %e, "spdy: writer ended with an error"),
        Err(e) => warn!(error = %e, "spdy: writer task failed"),
    }
    result
}

async fn send(frames: &mpsc::Sender<Frame>, frame: Frame) {
    // Fails only when the writer is gone, which the reader loop notices separately.
    let _ = frames.send(frame).await;
}

/// Writes queued frames, batching whatever is already queued into one flush.
async fn write_frames<W>(
    mut sink: FramedWrite<W, FrameEncoder>,
    mut frames: mpsc::Receiver<Frame>,
    dead: CancellationToken,
) -> Result<()>
where
    W: AsyncWrite + Send + Unpin,
{
    let result = async {
        while let Some(frame) = frames.recv().await {
            sink.feed(frame).await?;
            while let Ok(frame) = frames.try_recv() {
                sink.feed(frame).await?;
            }
            sink.flush().await?;
        }
        // Every sender is gone: the session is over; close our direction cleanly
        // (TLS close_notify).
        sink.get_mut().shutdown().await?;
        Ok::<(), Error>(())
    }
    .await;
    if result.is_err() {
        dead.cancel();
        // Unblock senders: nothing will be written any more.
        frames.close();
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    type Client = crate::spdy::test_client::ScriptedClient;

    fn syn(stream_id: u32, headers: Headers) -> Frame {
        Frame::SynStream {
            stream_id,
            associated_to: 0,
            priority: 0,
            slot: 0,
            fin: false,
            unidirectional: false,
            headers,
        }
    }

    type Incoming = IncomingStream<u32>;

    fn start() -> (
        Client,
        mpsc::Receiver<Incoming>,
        CancellationToken,
        tokio::task::JoinHandle<Result<()>>,
    ) {
        let (client_io, server_io) = tokio::io::duplex(1 << 20);
        let (tx, rx) = mpsc::channel(8);
        let shutdown = CancellationToken::new();
        let acceptor = |id: u32, h: &Headers| -> Result<u32, String> {
            match h.get("port") {
                Some(p) => p.parse::<u32>().map_err(|e| e.to_string()),
                None => Err(format!("stream {id} has no port")),
            }
        };
        let task = tokio::spawn(run(server_io, acceptor, tx, shutdown.clone()));
        (Client::new(client_io), rx, shutdown, task)
    }

    #[tokio::test]
    async fn accepts_replies_and_moves_data_both_ways() {
        let (mut c, mut streams, _shutdown, task) = start();
        c.send(syn(1, Headers::new().with("port", "80"))).await;
        assert_eq!(
            c.recv().await,
            Some(Frame::SynReply {
                stream_id: 1,
                fin: false,
                headers: Headers::new()
            })
        );
        let mut s = streams.recv().await.expect("stream");
        assert_eq!(s.meta, 80);
        c.send(Frame::Data {
            stream_id: 1,
            fin: false,
            data: Bytes::from_static(b"ping"),
        })
        .await;
        assert_eq!(s.data.recv().await.as_deref(), Some(&b"ping"[..]));
        c.send(Frame::Data {
            stream_id: 1,
            fin: true,
            data: Bytes::new(),
        })
        .await;
        assert_eq!(s.data.recv().await, None, "FIN closes the receiver");
        s.handle
            .send(Bytes::from_static(b"pong"))
            .await
            .expect("send");
        s.handle.finish().await;
        s.handle.finish().await; // idempotent
        assert_eq!(
            c.recv().await,
            Some(Frame::Data {
                stream_id: 1,
                fin: false,
                data: Bytes::from_static(b"pong")
            })
        );
        assert_eq!(
            c.recv().await,
            Some(Frame::Data {
                stream_id: 1,
                fin: true,
                data: Bytes::new()
            })
        );
        drop(s);
        drop(c);
        task.await.expect("join").expect("clean end");
    }

    #[tokio::test]
    async fn rejects_bad_streams_and_echoes_client_pings() {
        let (mut c, _streams, _shutdown, _task) = start();
        c.send(syn(1, Headers::new())).await; // no port: rejected by the acceptor
        assert_eq!(
            c.recv().await,
            Some(Frame::RstStream {
                stream_id: 1,
                status: RstStatus::Cancel
            })
        );
        c.send(syn(1, Headers::new().with("port", "1"))).await; // id not increasing
        assert_eq!(
            c.recv().await,
            Some(Frame::RstStream {
                stream_id: 1,
                status: RstStatus::ProtocolError
            })
        );
        c.send(syn(4, Headers::new().with("port", "1"))).await; // even: server-initiated id
        assert_eq!(
            c.recv().await,
            Some(Frame::RstStream {
                stream_id: 4,
                status: RstStatus::ProtocolError
            })
        );
        c.send(Frame::Ping { id: 7 }).await;
        assert_eq!(c.recv().await, Some(Frame::Ping { id: 7 }));
        c.send(Frame::GoAway {
            last_good_stream_id: 0,
            status: 0,
        })
        .await;
        c.send(syn(9, Headers::new().with("port", "1"))).await;
        assert_eq!(
            c.recv().await,
            Some(Frame::RstStream {
                stream_id: 9,
                status: RstStatus::RefusedStream
            })
        );
    }

    #[tokio::test]
    async fn client_reset_cancels_the_stream() {
        let (mut c, mut streams, _shutdown, _task) = start();
        c.send(syn(1, Headers::new().with("port", "80"))).await;
        let _ = c.recv().await;
        let mut s = streams.recv().await.expect("stream");
        c.send(Frame::RstStream {
            stream_id: 1,
            status: RstStatus::Cancel,
        })
        .await;
        s.handle.reset_token().cancelled().await;
        assert_eq!(s.data.recv().await, None);
        assert!(s.handle.send(Bytes::from_static(b"x")).await.is_err());
    }

    #[tokio::test]
    async fn consumed_bytes_produce_window_updates() {
        let (mut c, mut streams, _shutdown, _task) = start();
        c.send(syn(1, Headers::new().with("port", "80"))).await;
        let _ = c.recv().await;
        let s = streams.recv().await.expect("stream");
        s.handle.consumed(10_000).await;
        s.handle.consumed(30_000).await;
        assert_eq!(
            c.recv().await,
            Some(Frame::WindowUpdate {
                stream_id: 1,
                delta: 40_000
            })
        );
    }

    #[tokio::test]
    async fn shutdown_sends_goaway_and_cancels_streams() {
        let (mut c, mut streams, shutdown, task) = start();
        c.send(syn(3, Headers::new().with("port", "80"))).await;
        let _ = c.recv().await;
        let s = streams.recv().await.expect("stream");
        shutdown.cancel();
        assert_eq!(
            c.recv().await,
            Some(Frame::GoAway {
                last_good_stream_id: 3,
                status: 0
            })
        );
        s.handle.reset_token().cancelled().await;
        drop(s);
        task.await.expect("join").expect("clean end");
        assert_eq!(
            c.recv().await,
            None,
            "connection closed after the streams are gone"
        );
    }

    #[tokio::test]
    async fn garbage_ends_the_session_with_a_protocol_goaway() {
        let (mut c, _streams, _shutdown, task) = start();
        c.send_raw(&[0x80, 0x02, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1])
            .await;
        assert_eq!(
            c.recv().await,
            Some(Frame::GoAway {
                last_good_stream_id: 0,
                status: 1
            })
        );
        assert!(matches!(
            task.await.expect("join"),
            Err(Error::InvalidFrame(_))
        ));
    }
}
