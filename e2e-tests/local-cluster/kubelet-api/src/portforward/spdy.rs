//! SPDY/3.1 port-forward (`portforward.k8s.io`): what kubectl's streams reach us as.
//!
//! Per forwarded connection the client opens an `error` stream (and half-closes it at
//! once) and a `data` stream with the same `requestID`. Once both are here we dial the
//! pod port and copy bytes, half-closing like TCP: the client's FIN on `data` becomes a
//! `shutdown(Write)` towards the pod, the pod's EOF becomes our FIN on `data`. When both
//! directions are done (or the client resets `data`, which kubectl does once it has our
//! FIN) we FIN the `error` stream; kubectl waits for that before it closes its local
//! connection. A failed dial is reported on `error` as the kubelet words it.

use std::time::Duration;

use bytes::BytesMut;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use super::pairing::{Added, PairTable, StreamMeta, stream_meta};
use super::{COPY_CHUNK, PodTarget};
use crate::Result;
use crate::spdy::RstStatus;
use crate::spdy::session::{self, IncomingStream};

/// How long the second stream of a pair may take (the kubelet's default
/// `streamCreationTimeout`).
pub const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);

type Stream = IncomingStream<StreamMeta>;

/// Serves one upgraded SPDY port-forward connection until the client leaves or
/// `shutdown` fires.
pub async fn serve<IO>(io: IO, target: PodTarget, shutdown: CancellationToken) -> Result<()>
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (streams_tx, mut streams) = mpsc::channel::<Stream>(16);
    let session = tokio::spawn(session::run(io, stream_meta, streams_tx, shutdown.clone()));
    let mut pairs: PairTable<Stream> = PairTable::new();
    let mut timers = FuturesUnordered::new();
    let forwards = TaskTracker::new();

    loop {
        tokio::select! {
            stream = streams.recv() => {
                let Some(stream) = stream else { break };
                let request_id = stream.meta.request_id.clone();
                let kind = stream.meta.kind;
                match pairs.add(&request_id, kind, stream) {
                    Added::Waiting { new: true } => {
                        timers.push(async move {
                            tokio::time::sleep(STREAM_CREATION_TIMEOUT).await;
                            request_id
                        });
                    }
                    Added::Waiting { new: false } => {}
                    Added::Complete { data, error } => {
                        forwards.spawn(forward(data, error, target.clone()));
                    }
                    Added::Duplicate { stream, message } => {
                        let msg = format!("error processing stream for request {request_id}: {message}");
                        warn!(pod = %target, %msg, "port-forward");
                        if let Some(error) = pairs.error_stream(&request_id) {
                            let _ = error.handle.send(msg.into()).await;
                        }
                        stream.handle.reset(RstStatus::Cancel).await;
                    }
                }
            }
            Some(request_id) = timers.next(), if !timers.is_empty() => {
                if let Some((data, error)) = pairs.expire(&request_id) {
                    let msg = format!("(request={request_id}) timed out waiting for streams");
                    warn!(pod = %target, %msg, "port-forward");
                    if let Some(error) = error {
                        let _ = error.handle.send(msg.into()).await;
                        error.handle.finish().await;
                    }
                    if let Some(data) = data {
                        data.handle.reset(RstStatus::Cancel).await;
                    }
                }
            }
        }
    }
    // The session is over (its streams are reset), so the forwards are finishing.
    drop(pairs.drain());
    forwards.close();
    forwards.wait().await;
    match session.await {
        Ok(result) => result,
        Err(e) => {
            warn!(pod = %target, error = %e, "port-forward: session task failed");
            Ok(())
        }
    }
}

/// Forwards one connection: dial, copy both ways with half-close, close `error`.
async fn forward(data: Stream, mut error: Stream, target: PodTarget) {
    // Nothing is read from the error stream (clients half-close it at once); closing
    // our receiver makes the session drop stray bytes instead of waiting for us.
    error.data.close();
    let port = data.meta.port;
    let request_id = data.meta.request_id.clone();
    // Either stream being reset (or the session ending) aborts the connection.
    let cancel = CancellationToken::new();
    let watch = {
        let cancel = cancel.clone();
        let (d, e) = (
            data.handle.reset_token().clone(),
            error.handle.reset_token().clone(),
        );
        tokio::spawn(async move {
            tokio::select! {
                () = d.cancelled() => {}
                () = e.cancelled() => {}
                () = cancel.cancelled() => {}
            }
            cancel.cancel();
        })
    };

    let tcp = match target.connect(port, &cancel).await {
        Ok(tcp) => tcp,
        Err(e) => {
            // Reset by the client while dialing: nobody is waiting for an explanation.
            if !cancel.is_cancelled() {
                let msg = target.forward_error(port, &e);
                warn!(pod = %target, port, %request_id, error = %e, "port-forward: dial failed");
                let _ = error.handle.send(msg.into()).await;
            }
            error.handle.finish().await;
            data.handle.reset(RstStatus::Cancel).await;
            cancel.cancel();
            let _ = watch.await;
            return;
        }
    };
    debug!(pod = %target, port, %request_id, "port-forward: connected");

    let (mut pod_read, mut pod_write) = tcp.into_split();
    let Stream {
        data: mut from_client,
        handle,
        ..
    } = data;

    let to_pod = {
        let (handle, target) = (handle.clone(), target.clone());
        async move {
            while let Some(chunk) = from_client.recv().await {
                if let Err(e) = pod_write.write_all(&chunk).await {
                    // The pod stopped reading (closed or reset): nothing more can reach
                    // it. Dropping the receiver (by returning) makes the session discard
                    // further bytes for this stream instead of waiting on us.
                    debug!(pod = %target, port, error = %e, "port-forward: write to pod failed");
                    return;
                }
                handle.consumed(chunk.len()).await;
            }
            if !handle.reset_token().is_cancelled() {
                // Client FIN: half-close towards the pod, keep reading its answer.
                let _ = pod_write.shutdown().await;
            }
        }
    };
    let from_pod = async {
        let mut buf = BytesMut::with_capacity(COPY_CHUNK);
        loop {
            buf.reserve(COPY_CHUNK);
            match pod_read.read_buf(&mut buf).await {
                Ok(0) => break,
                Ok(_) => {
                    if handle.send(buf.split().freeze()).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    debug!(pod = %target, port, error = %e, "port-forward: read from pod failed");
                    break;
                }
            }
        }
        handle.finish().await;
    };
    let completed = tokio::select! {
        ((), ()) = async { tokio::join!(to_pod, from_pod) } => true,
        () = cancel.cancelled() => false,
    };
    debug!(pod = %target, port, %request_id, completed, "port-forward: connection done");
    if completed {
        error.handle.finish().await;
    } else {
        // Reset by the client (kubectl does this once it has our FIN): tell nothing,
        // just make sure both streams are closed on our side too.
        error.handle.finish().await;
        handle.reset(RstStatus::Cancel).await;
    }
    cancel.cancel();
    let _ = watch.await;
    debug!(pod = %target, port, %request_id, "port-forward: stream pair closed");
}

#[cfg(test)]
mod tests {
    //! The SPDY port-forward layer against a scripted client over an in-memory pipe and
    //! real loopback sockets as the "pod" (no apiserver: that is `tests/apiserver.rs`).

    use std::net::{IpAddr, Ipv4Addr};

    use bytes::Bytes;
    use tokio::net::TcpListener;

    use super::*;
    use crate::spdy::test_client::ScriptedClient;
    use crate::spdy::{Frame, Headers};

    /// The scripted client, skipping the SYN_REPLY and WINDOW_UPDATE frames these tests
    /// do not look at.
    struct Client(ScriptedClient);

    impl Client {
        async fn send(&mut self, frame: Frame) {
            self.0.send(frame).await;
        }

        async fn recv(&mut self) -> Option<Frame> {
            self.0
                .recv_where(|f| !matches!(f, Frame::SynReply { .. } | Frame::WindowUpdate { .. }))
                .await
        }

        async fn open(&mut self, id: u32, kind: &str, port: u16, request: &str, fin: bool) {
            let headers = Headers::new()
                .with("streamType", kind)
                .with("port", &port.to_string())
                .with("requestID", request);
            self.send(Frame::SynStream {
                stream_id: id,
                associated_to: 0,
                priority: 0,
                slot: 0,
                fin,
                unidirectional: false,
                headers,
            })
            .await;
        }
    }

    fn start() -> (
        Client,
        CancellationToken,
        tokio::task::JoinHandle<Result<()>>,
    ) {
        let (client_io, server_io) = tokio::io::duplex(1 << 20);
        let shutdown = CancellationToken::new();
        let target = PodTarget {
            namespace: "ns".into(),
            pod: "p".into(),
            ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        };
        let task = tokio::spawn(serve(server_io, target, shutdown.clone()));
        (Client(ScriptedClient::new(client_io)), shutdown, task)
    }

    fn data(stream_id: u32, fin: bool, bytes: &'static [u8]) -> Frame {
        Frame::Data {
            stream_id,
            fin,
            data: Bytes::from_static(bytes),
        }
    }

    /// A "pod" that answers "hello " + what it read, after the client half-closes.
    async fn greeter() -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = l.local_addr().expect("addr").port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    let _ = s.read_to_end(&mut got).await;
                    let _ = s.write_all(b"hello ").await;
                    let _ = s.write_all(&got).await;
                });
            }
        });
        port
    }

    #[tokio::test]
    async fn pair_forwards_with_half_close_in_both_directions() {
        let port = greeter().await;
        let (mut c, _shutdown, _task) = start();
        // client-go's order: error stream (half-closed at once), then data.
        c.open(1, "error", port, "0", false).await;
        c.send(data(1, true, b"")).await;
        c.open(3, "data", port, "0", false).await;
        c.send(data(3, false, b"wor")).await;
        c.send(data(3, true, b"ld")).await;
        // The greeter only answers after our FIN reached it as a TCP half-close.
        let mut echoed = Vec::new();
        loop {
            match c.recv().await.expect("frame") {
                Frame::Data {
                    stream_id: 3,
                    fin,
                    data,
                } => {
                    echoed.extend_from_slice(&data);
                    if fin {
                        break;
                    }
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(echoed, b"hello world");
        // Then the error stream ends, empty.
        assert_eq!(c.recv().await, Some(data(1, true, b"")));
    }

    #[tokio::test]
    async fn dial_failure_is_reported_on_the_error_stream() {
        let closed = {
            let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            l.local_addr().expect("addr").port()
        };
        let (mut c, _shutdown, _task) = start();
        c.open(1, "error", closed, "7", true).await;
        c.open(3, "data", closed, "7", false).await;
        let Some(Frame::Data {
            stream_id: 1,
            fin: false,
            data: msg,
        }) = c.recv().await
        else {
            panic!("expected the error message");
        };
        let msg = String::from_utf8_lossy(&msg).into_owned();
        assert!(
            msg.starts_with(&format!(
                "error forwarding port {closed} to pod ns/p: dial tcp"
            )),
            "{msg}"
        );
        assert_eq!(c.recv().await, Some(data(1, true, b"")));
        assert_eq!(
            c.recv().await,
            Some(Frame::RstStream {
                stream_id: 3,
                status: RstStatus::Cancel
            })
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_lonely_stream_times_out_with_the_kubelets_message() {
        let (mut c, _shutdown, _task) = start();
        c.open(1, "error", 80, "3", false).await;
        // Paused time jumps to the 30 s timeout as soon as everything is idle.
        let Some(Frame::Data {
            stream_id: 1,
            data: msg,
            ..
        }) = c.recv().await
        else {
            panic!("expected the timeout message");
        };
        assert_eq!(
            msg,
            Bytes::from_static(b"(request=3) timed out waiting for streams")
        );
        assert_eq!(c.recv().await, Some(data(1, true, b"")));
    }

    #[tokio::test]
    async fn duplicate_stream_is_reset_and_reported() {
        let (mut c, _shutdown, _task) = start();
        c.open(1, "error", 80, "5", false).await;
        c.open(3, "error", 80, "5", false).await;
        let Some(Frame::Data {
            stream_id: 1,
            data: msg,
            ..
        }) = c.recv().await
        else {
            panic!("expected a message on the first error stream");
        };
        assert_eq!(
            msg,
            Bytes::from_static(
                b"error processing stream for request 5: error stream already assigned"
            )
        );
        assert_eq!(
            c.recv().await,
            Some(Frame::RstStream {
                stream_id: 3,
                status: RstStatus::Cancel
            })
        );
    }

    #[tokio::test]
    async fn client_reset_closes_the_pod_connection_and_the_error_stream() {
        // A pod that never closes: only the client's reset can end the pair.
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = l.local_addr().expect("addr").port();
        let (closed_tx, closed_rx) = tokio::sync::oneshot::channel();
        let (accepted_tx, accepted_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.expect("accept");
            let _ = accepted_tx.send(());
            let mut buf = [0u8; 16];
            // Returns 0 once our side drops the connection.
            while s.read(&mut buf).await.map(|n| n > 0).unwrap_or(false) {}
            let _ = closed_tx.send(());
        });
        let (mut c, _shutdown, _task) = start();
        c.open(1, "error", port, "0", true).await;
        c.open(3, "data", port, "0", false).await;
        c.send(data(3, false, b"x")).await;
        accepted_rx.await.expect("pod connection accepted");
        c.send(Frame::RstStream {
            stream_id: 3,
            status: RstStatus::Cancel,
        })
        .await;
        assert_eq!(c.recv().await, Some(data(1, true, b"")));
        closed_rx.await.expect("pod connection closed");
    }

    #[tokio::test]
    async fn client_hang_up_ends_the_session() {
        let (mut c, _shutdown, task) = start();
        c.open(1, "error", 80, "0", true).await;
        drop(c);
        task.await.expect("join").expect("clean end");
    }
}
