//! A scripted SPDY client over an in-memory pipe, for the session and port-forward tests:
//! it writes frames with its own encoder and reads ours with its own decoder.

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::{Frame, FrameDecoder, FrameEncoder};

pub(crate) struct ScriptedClient {
    io: DuplexStream,
    enc: FrameEncoder,
    dec: FrameDecoder,
    buf: BytesMut,
}

impl ScriptedClient {
    pub(crate) fn new(io: DuplexStream) -> Self {
        ScriptedClient {
            io,
            enc: FrameEncoder::new().expect("encoder"),
            dec: FrameDecoder::new(),
            buf: BytesMut::new(),
        }
    }

    pub(crate) async fn send(&mut self, frame: Frame) {
        let mut out = BytesMut::new();
        self.enc.encode_frame(&frame, &mut out).expect("encode");
        self.io.write_all(&out).await.expect("write");
    }

    /// Bytes as they are, for frames the encoder would refuse to write.
    pub(crate) async fn send_raw(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).await.expect("write");
    }

    /// The next frame for which `keep` holds; `None` when the server closed the pipe.
    pub(crate) async fn recv_where(&mut self, keep: impl Fn(&Frame) -> bool) -> Option<Frame> {
        loop {
            while let Some(frame) = self.dec.decode_frame(&mut self.buf).expect("decode") {
                if keep(&frame) {
                    return Some(frame);
                }
            }
            if self.io.read_buf(&mut self.buf).await.expect("read") == 0 {
                return None;
            }
        }
    }

    /// The next frame, whatever it is.
    pub(crate) async fn recv(&mut self) -> Option<Frame> {
        self.recv_where(|_| true).await
    }
}
