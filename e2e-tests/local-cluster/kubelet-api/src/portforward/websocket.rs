//! Websocket port-forward (`v4.channel.k8s.io`, `v4.base64.channel.k8s.io`, or no
//! subprotocol): what kube-rs' `Api::<Pod>::portforward` reaches us as.
//!
//! One websocket forwards one connection per requested port (`?port=80,81`). Port `i`
//! uses channel `2i` for data (both ways) and `2i+1` for errors (to the client); every
//! message starts with its channel byte. Before anything else we send each channel the
//! port number as 2 little-endian bytes — kube-rs checks them. v4 has no half-close: a
//! port is done when the pod closes its side; the websocket closes when every port is
//! done or the client leaves. Mirrors `handleWebSocketStreams` in
//! `k8s.io/cri-streaming/pkg/streaming/portforward/websocket.go`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::{COPY_CHUNK, PodTarget};
use crate::{Error, Result};

/// Binary channel subprotocol.
pub const PROTOCOL_V4_BINARY: &str = "v4.channel.k8s.io";
/// Base64 text channel subprotocol.
pub const PROTOCOL_V4_BASE64: &str = "v4.base64.channel.k8s.io";
/// Subprotocols we accept, as the kubelet lists them ("" = client named none).
pub const PROTOCOLS: [&str; 3] = ["", PROTOCOL_V4_BINARY, PROTOCOL_V4_BASE64];

/// How channel messages are framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelCodec {
    /// Binary messages: `[channel, payload...]`.
    Binary,
    /// Text messages: ASCII `'0' + channel`, then the payload in base64.
    Base64,
}

impl ChannelCodec {
    /// The codec of a negotiated subprotocol.
    pub fn for_protocol(protocol: &str) -> Self {
        if protocol == PROTOCOL_V4_BASE64 {
            Self::Base64
        } else {
            Self::Binary
        }
    }

    /// Wraps a payload for a channel.
    pub fn encode(self, channel: u8, payload: &[u8]) -> Message {
        match self {
            Self::Binary => {
                let mut buf = BytesMut::with_capacity(payload.len() + 1);
                buf.extend_from_slice(&[channel]);
                buf.extend_from_slice(payload);
                Message::Binary(buf.freeze())
            }
            Self::Base64 => {
                let mut text = String::with_capacity(payload.len() * 4 / 3 + 5);
                text.push(char::from(b'0'.wrapping_add(channel)));
                STANDARD.encode_string(payload, &mut text);
                Message::text(text)
            }
        }
    }

    /// Unwraps a client message: `None` for messages without a payload for a channel
    /// (control frames, empty or undecodable messages — the kubelet skips those too).
    pub fn decode(self, msg: &Message) -> Option<(u8, Bytes)> {
        match (self, msg) {
            (Self::Binary, Message::Binary(data)) if !data.is_empty() => {
                Some((data[0], data.slice(1..)))
            }
            (Self::Base64, Message::Text(text)) if !text.is_empty() => {
                let bytes = text.as_bytes();
                let channel = bytes[0].wrapping_sub(b'0');
                STANDARD
                    .decode(&bytes[1..])
                    .ok()
                    .map(|p| (channel, Bytes::from(p)))
            }
            _ => None,
        }
    }
}

/// Serves one upgraded websocket port-forward connection.
pub async fn serve<S>(
    ws: WebSocketStream<S>,
    codec: ChannelCodec,
    ports: Vec<u16>,
    target: PodTarget,
    shutdown: CancellationToken,
) -> Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut incoming) = ws.split();
    let (out_tx, mut out_rx) = mpsc::channel::<Message>(64);
    let writer = tokio::spawn(async move {
        while let Some(msg) = out_rx.recv().await {
            sink.feed(msg).await?;
            while let Ok(msg) = out_rx.try_recv() {
                sink.feed(msg).await?;
            }
            sink.flush().await?;
        }
        // All ports are done (or the client left): a close frame ends the stream for
        // kube-rs.
        sink.close().await
    });

    // Port prefixes first, on every channel, before any data (kube-rs validates them).
    for (i, port) in ports.iter().enumerate() {
        let (data_ch, err_ch) = channels(i);
        for ch in [data_ch, err_ch] {
            out_tx
                .send(codec.encode(ch, &port.to_le_bytes()))
                .await
                .map_err(|_| Error::ConnectionClosed)?;
        }
    }

    let conn = shutdown.child_token();
    let mut to_ports = Vec::with_capacity(ports.len());
    let mut tasks = JoinSet::new();
    for (i, port) in ports.iter().copied().enumerate() {
        let (tx, rx) = mpsc::channel::<Bytes>(16);
        to_ports.push(tx);
        tasks.spawn(forward_port(
            i,
            port,
            rx,
            out_tx.clone(),
            codec,
            target.clone(),
            conn.clone(),
        ));
    }
    drop(out_tx);

    let mut result = Ok(());
    loop {
        tokio::select! {
            msg = incoming.next() => match msg {
                None | Some(Ok(Message::Close(_))) => break,
                Some(Err(e)) => {
                    result = Err(Error::WebSocket(e));
                    break;
                }
                Some(Ok(msg)) => {
                    let Some((ch, payload)) = codec.decode(&msg) else { continue };
                    // Even channels are the ports' data; anything else is not ours to read.
                    let index = usize::from(ch / 2);
                    if ch % 2 == 0 && index < to_ports.len() && !payload.is_empty() {
                        // A port that is already done drops late bytes.
                        let _ = to_ports[index].send(payload).await;
                    }
                }
            },
            joined = tasks.join_next() => {
                if joined.is_none() {
                    break; // every port is done
                }
            }
            () = conn.cancelled() => break,
        }
    }
    conn.cancel();
    drop(to_ports);
    while tasks.join_next().await.is_some() {}
    match writer.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => debug!(pod = %target, error = %e, "port-forward websocket: closing failed"),
        Err(e) => warn!(pod = %target, error = %e, "port-forward websocket: writer task failed"),
    }
    result
}

/// Data and error channel numbers of the port at `index`.
fn channels(index: usize) -> (u8, u8) {
    let data = u8::try_from(index * 2).unwrap_or(u8::MAX - 1);
    (data, data.saturating_add(1))
}

async fn forward_port(
    index: usize,
    port: u16,
    mut from_client: mpsc::Receiver<Bytes>,
    out: mpsc::Sender<Message>,
    codec: ChannelCodec,
    target: PodTarget,
    cancel: CancellationToken,
) {
    let (data_ch, err_ch) = channels(index);
    let tcp = match target.connect(port, &cancel).await {
        Ok(tcp) => tcp,
        Err(e) => {
            warn!(pod = %target, port, error = %e, "port-forward websocket: dial failed");
            let msg = target.forward_error(port, &e);
            let _ = out.send(codec.encode(err_ch, msg.as_bytes())).await;
            return;
        }
    };
    let (mut pod_read, mut pod_write) = tcp.into_split();
    let to_pod = async move {
        while let Some(chunk) = from_client.recv().await {
            if pod_write.write_all(&chunk).await.is_err() {
                break;
            }
        }
        // Late bytes for this port are dropped by the reader from now on.
        drop(from_client);
        let _ = pod_write.shutdown().await;
        // No half-close in v4: the port stays open until the pod side finishes.
        std::future::pending::<()>().await
    };
    let from_pod = async {
        let mut buf = vec![0u8; COPY_CHUNK];
        loop {
            match pod_read.read(&mut buf).await {
                Ok(0) => return,
                Ok(n) => {
                    if out.send(codec.encode(data_ch, &buf[..n])).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    debug!(pod = %target, port, error = %e, "port-forward websocket: read from pod failed");
                    return;
                }
            }
        }
    };
    tokio::select! {
        () = to_pod => {}
        () = from_pod => {}
        () = cancel.cancelled() => {}
    }
    debug!(pod = %target, port, "port-forward websocket: port done");
}

#[cfg(test)]
mod tests {
    use rstest::rstest;

    use super::*;

    #[rstest]
    #[case::binary_data(ChannelCodec::Binary, 0, &b"hello"[..])]
    #[case::binary_error_channel(ChannelCodec::Binary, 3, &b"boom"[..])]
    #[case::binary_port_prefix(ChannelCodec::Binary, 2, &8080u16.to_le_bytes()[..])]
    #[case::base64(ChannelCodec::Base64, 1, &[0u8, 255, 10][..])]
    fn channel_messages_round_trip(
        #[case] codec: ChannelCodec,
        #[case] ch: u8,
        #[case] payload: &[u8],
    ) {
        let msg = codec.encode(ch, payload);
        assert_eq!(
            codec.decode(&msg),
            Some((ch, Bytes::copy_from_slice(payload)))
        );
    }

    #[test]
    fn wire_forms_match_the_kubelet() {
        // Port 8080 prefix on channel 0: [0, 0x90, 0x1f].
        assert_eq!(
            ChannelCodec::Binary.encode(0, &8080u16.to_le_bytes()),
            Message::Binary(Bytes::from_static(&[0, 0x90, 0x1f]))
        );
        // wsstream's base64 example: "foo\n" on channel 0 is "0Zm9vCg==".
        assert_eq!(
            ChannelCodec::Base64.encode(0, b"foo\n"),
            Message::text("0Zm9vCg==")
        );
    }

    #[rstest]
    #[case::empty_binary(ChannelCodec::Binary, Message::Binary(Bytes::new()))]
    #[case::text_in_binary_mode(ChannelCodec::Binary, Message::text("0abc"))]
    #[case::bad_base64(ChannelCodec::Base64, Message::text("0***"))]
    #[case::ping(ChannelCodec::Binary, Message::Ping(Bytes::new()))]
    fn non_channel_messages_are_skipped(#[case] codec: ChannelCodec, #[case] msg: Message) {
        assert_eq!(codec.decode(&msg), None);
    }

    /// The handler against a tungstenite client over an in-memory pipe and a loopback
    /// "pod" that answers one message and closes.
    #[tokio::test]
    async fn forwards_reports_dial_errors_and_closes_when_the_pods_are_done() {
        use std::net::{IpAddr, Ipv4Addr};

        use tokio::net::TcpListener;
        use tokio_tungstenite::tungstenite::protocol::Role;

        let pod = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = pod.local_addr().expect("addr").port();
        tokio::spawn(async move {
            let (mut s, _) = pod.accept().await.expect("accept");
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf).await.expect("read");
            s.write_all(b"pong:").await.expect("write");
            s.write_all(&buf).await.expect("write");
        });
        let closed = {
            let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            l.local_addr().expect("addr").port()
        };
        let (client_io, server_io) = tokio::io::duplex(1 << 16);
        let target = PodTarget {
            namespace: "ns".into(),
            pod: "p".into(),
            ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        };
        let server = tokio::spawn(async move {
            let ws = WebSocketStream::from_raw_socket(server_io, Role::Server, None).await;
            serve(
                ws,
                ChannelCodec::Binary,
                vec![port, closed],
                target,
                CancellationToken::new(),
            )
            .await
        });
        let mut client = WebSocketStream::from_raw_socket(client_io, Role::Client, None).await;

        let codec = ChannelCodec::Binary;
        for (ch, p) in [(0, port), (1, port), (2, closed), (3, closed)] {
            let msg = client.next().await.expect("message").expect("ok");
            assert_eq!(
                codec.decode(&msg),
                Some((ch, Bytes::copy_from_slice(&p.to_le_bytes())))
            );
        }
        client.send(codec.encode(0, b"ping")).await.expect("send");
        let (mut data, mut errors) = (Vec::new(), String::new());
        while let Some(msg) = client.next().await {
            let msg = msg.expect("ok");
            if msg.is_close() {
                break;
            }
            match codec.decode(&msg) {
                Some((0, payload)) => data.extend_from_slice(&payload),
                Some((3, payload)) => errors.push_str(&String::from_utf8_lossy(&payload)),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(data, b"pong:ping");
        assert!(
            errors.starts_with(&format!(
                "error forwarding port {closed} to pod ns/p: dial tcp"
            )),
            "{errors}"
        );
        server.await.expect("join").expect("clean end");
    }

    #[rstest]
    #[case::first_port(0, (0, 1))]
    #[case::third_port(2, (4, 5))]
    fn channel_numbers(#[case] index: usize, #[case] want: (u8, u8)) {
        assert_eq!(channels(index), want);
    }
}
