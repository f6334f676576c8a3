//! Byte-level SPDY/3 codec: frames to bytes and back, with per-direction zlib header
//! compression primed with the SPDY/3 dictionary.
//!
//! Each direction of a session has ONE zlib stream that spans every header block
//! (SYN_STREAM, SYN_REPLY, HEADERS) in order, each block ending with a sync flush —
//! so the encoder/decoder state must live as long as the connection and blocks must be
//! encoded in the order they are written. Both types implement the `tokio_util::codec`
//! traits, so a session is just `FramedRead`/`FramedWrite` over the upgraded socket.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::dictionary::HEADER_DICTIONARY;
use super::frame::{
    Cursor, FLAG_CLEAR_SETTINGS, FLAG_FIN, FLAG_UNIDIRECTIONAL, Frame, Headers, MAX_PAYLOAD,
    RstStatus, Setting, VERSION, invalid, kind, len_u32, push_u32,
};
use crate::{Error, Result};

/// Largest decompressed header block we accept (spdystream allows 1000 headers of 1 MiB;
/// port-forward streams carry three short headers). Guards against zlib bombs.
pub const MAX_HEADER_BLOCK: usize = 1 << 20;

/// Frame header: 8 bytes for control and data frames alike.
const FRAME_HEADER_LEN: usize = 8;

/// Decodes frames from the peer's byte stream (owns the inbound zlib context).
pub struct FrameDecoder {
    inflate: Decompress,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameDecoder {
    /// A decoder at the start of a session.
    pub fn new() -> Self {
        Self {
            inflate: Decompress::new(true),
        }
    }

    /// Decodes the next complete frame from `buf`, consuming its bytes; `Ok(None)` when
    /// `buf` does not yet hold a whole frame.
    pub fn decode_frame(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>> {
        if buf.len() < FRAME_HEADER_LEN {
            return Ok(None);
        }
        let word = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
        let flags = buf[4];
        let len = (u32::from_be_bytes([0, buf[5], buf[6], buf[7]])) as usize;
        if buf.len() < FRAME_HEADER_LEN + len {
            buf.reserve(FRAME_HEADER_LEN + len - buf.len());
            return Ok(None);
        }
        buf.advance(FRAME_HEADER_LEN);
        let payload = buf.split_to(len).freeze();
        if word & 0x8000_0000 == 0 {
            let stream_id = word & 0x7fff_ffff;
            if stream_id == 0 {
                return Err(invalid("data frame on stream 0".into()));
            }
            return Ok(Some(Frame::Data {
                stream_id,
                fin: flags & FLAG_FIN != 0,
                data: payload,
            }));
        }
        let version = ((word >> 16) & 0x7fff) as u16;
        let frame_kind = (word & 0xffff) as u16;
        if version != VERSION {
            return Err(invalid(format!("unsupported SPDY version {version}")));
        }
        self.decode_control(frame_kind, flags, &payload).map(Some)
    }

    fn decode_control(&mut self, frame_kind: u16, flags: u8, payload: &[u8]) -> Result<Frame> {
        let mut cur = Cursor::new(payload);
        let fin = flags & FLAG_FIN != 0;
        let frame = match frame_kind {
            kind::SYN_STREAM => {
                let stream_id = nonzero_stream(cur.u32("stream id")? & 0x7fff_ffff)?;
                let associated_to = cur.u32("associated stream id")? & 0x7fff_ffff;
                let priority = cur.u8("priority")? >> 5;
                let slot = cur.u8("slot")?;
                let headers = self.inflate_headers(cur.rest())?;
                Frame::SynStream {
                    stream_id,
                    associated_to,
                    priority,
                    slot,
                    fin,
                    unidirectional: flags & FLAG_UNIDIRECTIONAL != 0,
                    headers,
                }
            }
            kind::SYN_REPLY => {
                let stream_id = nonzero_stream(cur.u32("stream id")? & 0x7fff_ffff)?;
                Frame::SynReply {
                    stream_id,
                    fin,
                    headers: self.inflate_headers(cur.rest())?,
                }
            }
            kind::HEADERS => {
                let stream_id = nonzero_stream(cur.u32("stream id")? & 0x7fff_ffff)?;
                Frame::Headers {
                    stream_id,
                    fin,
                    headers: self.inflate_headers(cur.rest())?,
                }
            }
            kind::RST_STREAM => {
                exact_len(payload, 8, "RST_STREAM")?;
                let stream_id = nonzero_stream(cur.u32("stream id")? & 0x7fff_ffff)?;
                let code = cur.u32("status")?;
                if code == 0 {
                    return Err(invalid("RST_STREAM with status 0".into()));
                }
                Frame::RstStream {
                    stream_id,
                    status: RstStatus::from_code(code),
                }
            }
            kind::SETTINGS => {
                let count = cur.u32("settings count")? as usize;
                if count > cur.remaining() / 8 {
                    return Err(invalid(format!(
                        "SETTINGS claims {count} entries in {} bytes",
                        payload.len()
                    )));
                }
                let mut entries = Vec::with_capacity(count);
                for _ in 0..count {
                    let flag_id = cur.u32("setting id")?;
                    let value = cur.u32("setting value")?;
                    entries.push(Setting {
                        flags: (flag_id >> 24) as u8,
                        id: flag_id & 0x00ff_ffff,
                        value,
                    });
                }
                Frame::Settings {
                    clear: flags & FLAG_CLEAR_SETTINGS != 0,
                    entries,
                }
            }
            kind::PING => {
                exact_len(payload, 4, "PING")?;
                let id = cur.u32("ping id")?;
                if id == 0 {
                    return Err(invalid("PING with id 0".into()));
                }
                Frame::Ping { id }
            }
            kind::GOAWAY => {
                exact_len(payload, 8, "GOAWAY")?;
                let last_good_stream_id = cur.u32("last good stream id")? & 0x7fff_ffff;
                Frame::GoAway {
                    last_good_stream_id,
                    status: cur.u32("status")?,
                }
            }
            kind::WINDOW_UPDATE => {
                exact_len(payload, 8, "WINDOW_UPDATE")?;
                let stream_id = cur.u32("stream id")? & 0x7fff_ffff;
                Frame::WindowUpdate {
                    stream_id,
                    delta: cur.u32("delta")? & 0x7fff_ffff,
                }
            }
            other => Frame::Unknown { kind: other },
        };
        Ok(frame)
    }

    /// Inflates one header block: the peer ends every block with a sync flush, so all
    /// of `compressed` must be consumed and yields exactly the block's bytes.
    fn inflate_headers(&mut self, compressed: &[u8]) -> Result<Headers> {
        let mut out: Vec<u8> = Vec::with_capacity(256);
        let mut pos = 0usize;
        loop {
            if out.capacity() - out.len() < 256 {
                out.reserve(out.len().max(1024));
            }
            let in_before = self.inflate.total_in();
            let out_before = out.len();
            let status = match self.inflate.decompress_vec(
                &compressed[pos..],
                &mut out,
                FlushDecompress::Sync,
            ) {
                Ok(status) => status,
                Err(e) if e.needs_dictionary().is_some() => {
                    pos += consumed(in_before, self.inflate.total_in());
                    self.inflate
                        .set_dictionary(&HEADER_DICTIONARY)
                        .map_err(Error::HeaderDecompress)?;
                    continue;
                }
                Err(e) => return Err(Error::HeaderDecompress(e)),
            };
            pos += consumed(in_before, self.inflate.total_in());
            if out.len() > MAX_HEADER_BLOCK {
                return Err(invalid(format!(
                    "header block inflates to more than {MAX_HEADER_BLOCK} bytes"
                )));
            }
            let progressed = self.inflate.total_in() != in_before || out.len() != out_before;
            let output_full = out.len() == out.capacity();
            if status == Status::StreamEnd || (pos >= compressed.len() && !output_full) {
                break;
            }
            if !progressed && !output_full {
                return Err(invalid("header block is a truncated zlib stream".into()));
            }
        }
        if pos != compressed.len() {
            return Err(invalid(format!(
                "{} compressed header bytes left over",
                compressed.len() - pos
            )));
        }
        Headers::from_block(&out)
    }
}

fn consumed(before: u64, after: u64) -> usize {
    usize::try_from(after.saturating_sub(before)).unwrap_or(usize::MAX)
}

fn nonzero_stream(id: u32) -> Result<u32> {
    if id == 0 {
        return Err(invalid("stream id 0".into()));
    }
    Ok(id)
}

fn exact_len(payload: &[u8], want: usize, what: &str) -> Result<()> {
    if payload.len() != want {
        return Err(invalid(format!(
            "{what} payload of {} bytes, want {want}",
            payload.len()
        )));
    }
    Ok(())
}

/// Encodes frames for the peer (owns the outbound zlib context).
pub struct FrameEncoder {
    deflate: Compress,
}

impl FrameEncoder {
    /// An encoder at the start of a session; fails only if zlib rejects the dictionary.
    pub fn new() -> Result<Self> {
        let mut deflate = Compress::new(Compression::default(), true);
        deflate
            .set_dictionary(&HEADER_DICTIONARY)
            .map_err(Error::HeaderCompress)?;
        Ok(Self { deflate })
    }

    /// Appends the wire form of `frame` to `out`.
    pub fn encode_frame(&mut self, frame: &Frame, out: &mut BytesMut) -> Result<()> {
        match frame {
            Frame::Data {
                stream_id,
                fin,
                data,
            } => {
                if data.len() > MAX_PAYLOAD {
                    return Err(invalid(format!("data frame of {} bytes", data.len())));
                }
                out.reserve(FRAME_HEADER_LEN + data.len());
                out.put_u32(stream_id & 0x7fff_ffff);
                out.put_u32(flags_len(u8::from(*fin), data.len()));
                out.extend_from_slice(data);
            }
            Frame::SynStream {
                stream_id,
                associated_to,
                priority,
                slot,
                fin,
                unidirectional,
                headers,
            } => {
                let mut payload = Vec::new();
                push_u32(&mut payload, stream_id & 0x7fff_ffff);
                push_u32(&mut payload, associated_to & 0x7fff_ffff);
                payload.push((priority & 0x07) << 5);
                payload.push(*slot);
                self.deflate_headers(headers, &mut payload)?;
                let flags =
                    (u8::from(*fin) * FLAG_FIN) | (u8::from(*unidirectional) * FLAG_UNIDIRECTIONAL);
                control(out, kind::SYN_STREAM, flags, &payload)?;
            }
            Frame::SynReply {
                stream_id,
                fin,
                headers,
            } => {
                let mut payload = Vec::new();
                push_u32(&mut payload, stream_id & 0x7fff_ffff);
                self.deflate_headers(headers, &mut payload)?;
                control(out, kind::SYN_REPLY, u8::from(*fin), &payload)?;
            }
            Frame::Headers {
                stream_id,
                fin,
                headers,
            } => {
                let mut payload = Vec::new();
                push_u32(&mut payload, stream_id & 0x7fff_ffff);
                self.deflate_headers(headers, &mut payload)?;
                control(out, kind::HEADERS, u8::from(*fin), &payload)?;
            }
            Frame::RstStream { stream_id, status } => {
                let mut payload = Vec::with_capacity(8);
                push_u32(&mut payload, stream_id & 0x7fff_ffff);
                push_u32(&mut payload, status.code());
                control(out, kind::RST_STREAM, 0, &payload)?;
            }
            Frame::Settings { clear, entries } => {
                let mut payload = Vec::with_capacity(4 + 8 * entries.len());
                push_u32(&mut payload, len_u32(entries.len()));
                for s in entries {
                    push_u32(
                        &mut payload,
                        (u32::from(s.flags) << 24) | (s.id & 0x00ff_ffff),
                    );
                    push_u32(&mut payload, s.value);
                }
                control(
                    out,
                    kind::SETTINGS,
                    u8::from(*clear) * FLAG_CLEAR_SETTINGS,
                    &payload,
                )?;
            }
            Frame::Ping { id } => control(out, kind::PING, 0, &id.to_be_bytes())?,
            Frame::GoAway {
                last_good_stream_id,
                status,
            } => {
                let mut payload = Vec::with_capacity(8);
                push_u32(&mut payload, last_good_stream_id & 0x7fff_ffff);
                push_u32(&mut payload, *status);
                control(out, kind::GOAWAY, 0, &payload)?;
            }
            Frame::WindowUpdate { stream_id, delta } => {
                let mut payload = Vec::with_capacity(8);
                push_u32(&mut payload, stream_id & 0x7fff_ffff);
                push_u32(&mut payload, delta & 0x7fff_ffff);
                control(out, kind::WINDOW_UPDATE, 0, &payload)?;
            }
            Frame::Unknown { kind } => {
                return Err(invalid(format!(
                    "refusing to encode unknown frame type {kind}"
                )));
            }
        }
        Ok(())
    }

    /// Compresses one header block into `out`, ending with a sync flush so the peer can
    /// decode it without waiting for more bytes.
    fn deflate_headers(&mut self, headers: &Headers, out: &mut Vec<u8>) -> Result<()> {
        let block = headers.to_block();
        let start_in = self.deflate.total_in();
        loop {
            out.reserve(block.len() + 64);
            let done = consumed(start_in, self.deflate.total_in());
            self.deflate
                .compress_vec(&block[done..], out, FlushCompress::Sync)
                .map_err(Error::HeaderCompress)?;
            let done = consumed(start_in, self.deflate.total_in());
            // zlib's contract: the flush is complete once all input is consumed and it
            // did not fill the output buffer.
            if done >= block.len() && out.len() < out.capacity() {
                return Ok(());
            }
        }
    }
}

fn flags_len(flags: u8, len: usize) -> u32 {
    (u32::from(flags) << 24) | (len_u32(len) & 0x00ff_ffff)
}

fn control(out: &mut BytesMut, frame_kind: u16, flags: u8, payload: &[u8]) -> Result<()> {
    if payload.len() > MAX_PAYLOAD {
        return Err(invalid(format!(
            "control frame payload of {} bytes",
            payload.len()
        )));
    }
    out.reserve(FRAME_HEADER_LEN + payload.len());
    out.put_u16(0x8000 | VERSION);
    out.put_u16(frame_kind);
    out.put_u32(flags_len(flags, payload.len()));
    out.extend_from_slice(payload);
    Ok(())
}

impl tokio_util::codec::Decoder for FrameDecoder {
    type Item = Frame;
    type Error = Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>> {
        self.decode_frame(src)
    }
}

impl tokio_util::codec::Encoder<Frame> for FrameEncoder {
    type Error = Error;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<()> {
        self.encode_frame(&frame, dst)
    }
}

/// Convenience for tests and tools: decodes every frame in `bytes`, failing on a
/// trailing partial frame.
pub fn decode_all(decoder: &mut FrameDecoder, bytes: &[u8]) -> Result<Vec<Frame>> {
    let mut buf = BytesMut::from(bytes);
    let mut frames = Vec::new();
    while let Some(frame) = decoder.decode_frame(&mut buf)? {
        frames.push(frame);
    }
    if !buf.is_empty() {
        return Err(invalid(format!(
            "{} bytes of a partial frame at the end",
            buf.len()
        )));
    }
    Ok(frames)
}

/// Convenience for tests and tools: the wire bytes of `frames`, in order.
pub fn encode_all(encoder: &mut FrameEncoder, frames: &[Frame]) -> Result<Bytes> {
    let mut out = BytesMut::new();
    for frame in frames {
        encoder.encode_frame(frame, &mut out)?;
    }
    Ok(out.freeze())
}

#[cfg(test)]
mod tests {
    //! Known byte vectors come from `testdata/spdystream_frames.txt`, produced by
    //! `github.com/moby/spdystream/spdy` v0.5.1's Framer (the code inside kubectl and
    //! the real kubelet); see that file for how.

    use std::collections::HashMap;

    use rstest::rstest;

    use super::*;

    fn golden() -> HashMap<&'static str, Vec<u8>> {
        include_str!("testdata/spdystream_frames.txt")
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| {
                let (name, hex) = l.split_once(' ').expect("name and hex");
                (name, unhex(hex.trim()))
            })
            .collect()
    }

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }

    fn decode_one(decoder: &mut FrameDecoder, bytes: &[u8]) -> Frame {
        let mut frames = decode_all(decoder, bytes).expect("decodes");
        assert_eq!(frames.len(), 1, "one frame in {bytes:02x?}");
        frames.remove(0)
    }

    /// Frames without a header block encode to exactly spdystream's bytes.
    #[rstest]
    #[case::data_hello(
        "data_3_hello",
        Frame::Data { stream_id: 3, fin: false, data: Bytes::from_static(b"hello") }
    )]
    #[case::data_fin_empty("data_1_fin_empty", Frame::Data { stream_id: 1, fin: true, data: Bytes::new() })]
    #[case::rst_cancel("rst_3_cancel", Frame::RstStream { stream_id: 3, status: RstStatus::Cancel })]
    #[case::ping("ping_1", Frame::Ping { id: 1 })]
    #[case::goaway("goaway_3_ok", Frame::GoAway { last_good_stream_id: 3, status: 0 })]
    #[case::window_update("window_update_3_65536", Frame::WindowUpdate { stream_id: 3, delta: 65536 })]
    #[case::settings(
        "settings_window_streams",
        Frame::Settings {
            clear: false,
            entries: vec![
                Setting { flags: 0, id: 7, value: 65536 },
                Setting { flags: 1, id: 4, value: 100 },
            ],
        }
    )]
    fn uncompressed_frames_match_spdystream_bytes(#[case] name: &str, #[case] frame: Frame) {
        let want = golden().remove(name).expect("golden vector");
        let mut enc = FrameEncoder::new().expect("encoder");
        assert_eq!(
            encode_all(&mut enc, std::slice::from_ref(&frame)).expect("encodes"),
            want
        );
        assert_eq!(decode_one(&mut FrameDecoder::new(), &want), frame);
    }

    /// What kubectl sends: consecutive SYN_STREAMs share one zlib context (the second
    /// block is only decodable after the first), FIN and priority bits are honoured.
    #[test]
    fn decodes_a_spdystream_client_sequence_with_shared_compression() {
        let g = golden();
        let mut dec = FrameDecoder::new();
        let expected = [
            (
                "client_syn_stream_1_error",
                1,
                false,
                ("streamtype", "error"),
            ),
            ("client_syn_stream_3_data", 3, false, ("streamtype", "data")),
            ("client_syn_stream_5_port_fin", 5, true, ("port", "8080")),
        ];
        for (name, id, want_fin, (hname, hvalue)) in expected {
            match decode_one(&mut dec, &g[name]) {
                Frame::SynStream {
                    stream_id,
                    fin,
                    headers,
                    priority,
                    unidirectional,
                    ..
                } => {
                    assert_eq!(stream_id, id, "{name}");
                    assert_eq!(fin, want_fin, "{name}");
                    assert_eq!(priority, 0);
                    assert!(!unidirectional);
                    assert_eq!(headers.len(), 1, "{name}");
                    assert_eq!(headers.get(hname), Some(hvalue), "{name}");
                }
                other => panic!("{name}: {other:?}"),
            }
        }
    }

    #[test]
    fn decodes_spdystream_server_replies_and_multi_value_headers() {
        let g = golden();
        let mut dec = FrameDecoder::new();
        let f1 = decode_one(&mut dec, &g["server_syn_reply_1_empty"]);
        assert_eq!(
            f1,
            Frame::SynReply {
                stream_id: 1,
                fin: false,
                headers: Headers::new()
            }
        );
        let f2 = decode_one(&mut dec, &g["server_syn_reply_3_empty"]);
        assert_eq!(
            f2,
            Frame::SynReply {
                stream_id: 3,
                fin: false,
                headers: Headers::new()
            }
        );
        let f3 = decode_one(&mut dec, &g["server_headers_3_status_fin"]);
        assert_eq!(
            f3,
            Frame::Headers {
                stream_id: 3,
                fin: true,
                headers: Headers::new().with("status", "200")
            }
        );
        let f4 = decode_one(&mut dec, &g["server_syn_reply_5_multi"]);
        assert_eq!(
            f4,
            Frame::SynReply {
                stream_id: 5,
                fin: false,
                headers: Headers::new().with("x", "a").with("x", "b")
            }
        );
    }

    /// A block compressed in one context cannot be read by a fresh decoder: proves the
    /// golden sequence really exercises the shared context (and that we don't "pass" by
    /// resetting per frame).
    #[test]
    fn second_block_needs_the_first_blocks_context() {
        let g = golden();
        let mut fresh = FrameDecoder::new();
        assert!(decode_all(&mut fresh, &g["client_syn_stream_3_data"]).is_err());
    }

    #[test]
    fn our_compressed_header_blocks_round_trip_across_frames() {
        let frames = vec![
            Frame::SynReply {
                stream_id: 1,
                fin: false,
                headers: Headers::new(),
            },
            Frame::SynStream {
                stream_id: 2,
                associated_to: 1,
                priority: 7,
                slot: 0,
                fin: true,
                unidirectional: true,
                headers: Headers::new().with("streamtype", "data").with("port", "80"),
            },
            Frame::Headers {
                stream_id: 2,
                fin: true,
                headers: Headers::new().with("a", "b"),
            },
            Frame::SynReply {
                stream_id: 3,
                fin: true,
                headers: Headers::new().with("x", "y"),
            },
        ];
        let mut enc = FrameEncoder::new().expect("encoder");
        let bytes = encode_all(&mut enc, &frames).expect("encodes");
        // The zlib stream starts with a header that names the SPDY/3 dictionary
        // (FDICT set, Adler-32 of the dictionary = 0xe3c6a7c2, as in Go's frames).
        let syn_reply_block = &bytes[12..18];
        assert_eq!(syn_reply_block[1] & 0x20, 0x20, "FDICT flag");
        assert_eq!(&syn_reply_block[2..6], &[0xe3, 0xc6, 0xa7, 0xc2]);
        assert_eq!(
            decode_all(&mut FrameDecoder::new(), &bytes).expect("decodes"),
            frames
        );
    }

    /// Frames split at every byte boundary decode the same (the socket delivers
    /// arbitrary chunks).
    #[test]
    fn decoding_is_incremental() {
        let g = golden();
        let mut stream = Vec::new();
        for name in [
            "client_syn_stream_1_error",
            "client_syn_stream_3_data",
            "data_3_hello",
            "ping_1",
        ] {
            stream.extend_from_slice(&g[name]);
        }
        let mut dec = FrameDecoder::new();
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        for b in &stream {
            buf.put_u8(*b);
            while let Some(f) = dec.decode_frame(&mut buf).expect("decodes") {
                frames.push(f);
            }
        }
        assert_eq!(frames.len(), 4);
        assert_eq!(frames[3], Frame::Ping { id: 1 });
    }

    #[rstest]
    #[case::rst_status_zero(&[0x80, 3, 0, 3, 0, 0, 0, 8, 0, 0, 0, 1, 0, 0, 0, 0][..])]
    #[case::rst_stream_zero(&[0x80, 3, 0, 3, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 5][..])]
    #[case::rst_short(&[0x80, 3, 0, 3, 0, 0, 0, 4, 0, 0, 0, 1][..])]
    #[case::ping_zero(&[0x80, 3, 0, 6, 0, 0, 0, 4, 0, 0, 0, 0][..])]
    #[case::data_stream_zero(&[0, 0, 0, 0, 0, 0, 0, 1, 7][..])]
    #[case::spdy2(&[0x80, 2, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1][..])]
    #[case::settings_count_lies(&[0x80, 3, 0, 4, 0, 0, 0, 4, 0, 0, 0, 3][..])]
    #[case::goaway_long(&[0x80, 3, 0, 7, 0, 0, 0, 9, 0, 0, 0, 1, 0, 0, 0, 0, 0][..])]
    #[case::syn_stream_garbage_block(&[0x80, 3, 0, 1, 0, 0, 0, 14, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4][..])]
    fn malformed_frames_are_errors_not_panics(#[case] bytes: &[u8]) {
        let err = decode_all(&mut FrameDecoder::new(), bytes).expect_err("must fail");
        assert!(
            matches!(err, Error::InvalidFrame(_) | Error::HeaderDecompress(_)),
            "{err:?}"
        );
    }

    #[test]
    fn unknown_control_frames_are_kept_for_the_session_to_ignore() {
        let bytes = [0x80, 3, 0, 0x0a, 0, 0, 0, 2, 1, 2];
        assert_eq!(
            decode_all(&mut FrameDecoder::new(), &bytes).expect("decodes"),
            vec![Frame::Unknown { kind: 10 }]
        );
    }

    #[test]
    fn partial_frame_waits_for_more_bytes() {
        let mut buf = BytesMut::from(&[0u8, 0, 0, 3, 0, 0, 0, 5, b'h', b'e'][..]);
        assert_eq!(
            FrameDecoder::new().decode_frame(&mut buf).expect("ok"),
            None
        );
        assert_eq!(buf.len(), 10, "nothing consumed");
    }
}
