//! SPDY/3 frames as values, and the (uncompressed) name/value header block format.
//!
//! The wire layout follows the SPDY/3 draft (section 2.2 and 2.6); validation mirrors
//! what `moby/spdystream` rejects, so we fail on the same inputs as the real kubelet.

use bytes::Bytes;

use crate::{Error, Result};

/// The only SPDY version Kubernetes speaks.
pub const VERSION: u16 = 3;

/// Largest payload a frame can carry (24-bit length field).
pub const MAX_PAYLOAD: usize = 0x00ff_ffff;

/// Control frame type codes (SPDY/3 section 2.6).
pub(crate) mod kind {
    pub const SYN_STREAM: u16 = 1;
    pub const SYN_REPLY: u16 = 2;
    pub const RST_STREAM: u16 = 3;
    pub const SETTINGS: u16 = 4;
    pub const PING: u16 = 6;
    pub const GOAWAY: u16 = 7;
    pub const HEADERS: u16 = 8;
    pub const WINDOW_UPDATE: u16 = 9;
}

/// FLAG_FIN on control and data frames.
pub const FLAG_FIN: u8 = 0x01;
/// FLAG_UNIDIRECTIONAL on SYN_STREAM.
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;
/// FLAG_SETTINGS_CLEAR_SETTINGS on SETTINGS.
pub const FLAG_CLEAR_SETTINGS: u8 = 0x01;

/// RST_STREAM status codes (SPDY/3 section 2.4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RstStatus {
    /// 1: generic protocol violation.
    ProtocolError,
    /// 2: frame for a stream that is not active.
    InvalidStream,
    /// 3: the stream was refused before any processing.
    RefusedStream,
    /// 4: unsupported SPDY version.
    UnsupportedVersion,
    /// 5: the stream is no longer needed (what spdystream's `Reset()` sends).
    Cancel,
    /// 6: internal error.
    InternalError,
    /// 7: flow control violated.
    FlowControlError,
    /// 8: SYN_STREAM for a stream already open.
    StreamInUse,
    /// 9: data or SYN_REPLY for a half-closed stream.
    StreamAlreadyClosed,
    /// 10: credentials rejected.
    InvalidCredentials,
    /// 11: frame too large to process.
    FrameTooLarge,
    /// Any other non-zero code: kept so that decoding never loses information.
    Other(u32),
}

impl RstStatus {
    /// The wire value.
    pub fn code(self) -> u32 {
        match self {
            Self::ProtocolError => 1,
            Self::InvalidStream => 2,
            Self::RefusedStream => 3,
            Self::UnsupportedVersion => 4,
            Self::Cancel => 5,
            Self::InternalError => 6,
            Self::FlowControlError => 7,
            Self::StreamInUse => 8,
            Self::StreamAlreadyClosed => 9,
            Self::InvalidCredentials => 10,
            Self::FrameTooLarge => 11,
            Self::Other(code) => code,
        }
    }

    /// From the wire value (0 is invalid and rejected by the decoder before this).
    pub fn from_code(code: u32) -> Self {
        match code {
            1 => Self::ProtocolError,
            2 => Self::InvalidStream,
            3 => Self::RefusedStream,
            4 => Self::UnsupportedVersion,
            5 => Self::Cancel,
            6 => Self::InternalError,
            7 => Self::FlowControlError,
            8 => Self::StreamInUse,
            9 => Self::StreamAlreadyClosed,
            10 => Self::InvalidCredentials,
            11 => Self::FrameTooLarge,
            other => Self::Other(other),
        }
    }
}

/// One SETTINGS entry (the 8-bit flags and the 24-bit id share one 32-bit word).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    /// FLAG_SETTINGS_PERSIST_VALUE (1) / FLAG_SETTINGS_PERSISTED (2).
    pub flags: u8,
    /// Setting id, e.g. 7 = SETTINGS_INITIAL_WINDOW_SIZE.
    pub id: u32,
    /// Setting value.
    pub value: u32,
}

/// SETTINGS_INITIAL_WINDOW_SIZE.
pub const SETTINGS_INITIAL_WINDOW_SIZE: u32 = 7;

/// A name/value header block. Names are lowercase on the wire (SPDY/3 requires it);
/// a name listed several times is one wire entry with NUL-separated values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(Vec<(String, String)>);

impl Headers {
    /// An empty block (what the kubelet puts in its SYN_REPLY frames).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a value; the name is lowercased as the wire format requires.
    pub fn add(&mut self, name: &str, value: &str) {
        self.0.push((name.to_ascii_lowercase(), value.to_owned()));
    }

    /// Builder form of [`add`](Self::add).
    #[must_use]
    pub fn with(mut self, name: &str, value: &str) -> Self {
        self.add(name, value);
        self
    }

    /// First value of a header, case-insensitively (Go's `http.Header.Get`).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// All `(name, value)` pairs in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// No values at all.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Wire form: u32 count, then u32-length-prefixed name and value per distinct name
    /// (values of a repeated name joined with NUL), in first-appearance order.
    pub fn to_block(&self) -> Vec<u8> {
        let mut names: Vec<&str> = Vec::new();
        for (name, _) in &self.0 {
            if !names.contains(&name.as_str()) {
                names.push(name);
            }
        }
        let mut out = Vec::new();
        push_u32(&mut out, len_u32(names.len()));
        for name in names {
            let joined = self
                .0
                .iter()
                .filter(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
                .collect::<Vec<_>>()
                .join("\0");
            push_u32(&mut out, len_u32(name.len()));
            out.extend_from_slice(name.as_bytes());
            push_u32(&mut out, len_u32(joined.len()));
            out.extend_from_slice(joined.as_bytes());
        }
        out
    }

    /// Parses an uncompressed header block. Like spdystream: upper-case names are
    /// lowercased, NUL splits a value into several, trailing bytes are an error.
    pub fn from_block(block: &[u8]) -> Result<Self> {
        let mut cur = Cursor::new(block);
        let count = cur.u32("header count")?;
        // Every entry takes at least 8 bytes: a huge count in a tiny block is garbage,
        // and refusing it early avoids a large allocation.
        if count as usize > block.len() / 8 {
            return Err(invalid(format!(
                "header block claims {count} entries in {} bytes",
                block.len()
            )));
        }
        let mut headers = Headers::new();
        for _ in 0..count {
            let name_len = cur.u32("header name length")? as usize;
            let name = cur.take(name_len, "header name")?;
            let value_len = cur.u32("header value length")? as usize;
            let value = cur.take(value_len, "header value")?;
            let name = std::str::from_utf8(name)
                .map_err(|_| invalid("header name is not UTF-8".into()))?;
            if name.is_empty() {
                return Err(invalid("empty header name".into()));
            }
            let value = String::from_utf8_lossy(value);
            for v in value.split('\0') {
                headers.add(name, v);
            }
        }
        if cur.remaining() != 0 {
            return Err(invalid(format!(
                "{} bytes after the last header",
                cur.remaining()
            )));
        }
        Ok(headers)
    }
}

/// A SPDY/3 frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Stream payload bytes.
    Data {
        /// Stream the bytes belong to.
        stream_id: u32,
        /// Sender's last frame on this stream (half-close).
        fin: bool,
        /// Payload (may be empty, e.g. a bare FIN).
        data: Bytes,
    },
    /// Opens a stream.
    SynStream {
        /// New stream id (odd when the client opens it).
        stream_id: u32,
        /// Stream this one is associated with (server push), 0 if none.
        associated_to: u32,
        /// 0 (highest) to 7.
        priority: u8,
        /// Credential slot (unused by Kubernetes).
        slot: u8,
        /// Opener sends nothing more.
        fin: bool,
        /// Receiver must not send on it.
        unidirectional: bool,
        /// Stream headers (`streamtype`, `port`, `requestid` for port-forward).
        headers: Headers,
    },
    /// Accepts a stream.
    SynReply {
        /// Stream being accepted.
        stream_id: u32,
        /// Replier sends nothing more.
        fin: bool,
        /// Reply headers (empty from the kubelet).
        headers: Headers,
    },
    /// Aborts a stream.
    RstStream {
        /// Stream being reset.
        stream_id: u32,
        /// Why.
        status: RstStatus,
    },
    /// Connection settings.
    Settings {
        /// FLAG_SETTINGS_CLEAR_SETTINGS.
        clear: bool,
        /// The entries.
        entries: Vec<Setting>,
    },
    /// Liveness check; the receiver echoes pings the other side started.
    Ping {
        /// Odd from clients, even from servers.
        id: u32,
    },
    /// The sender will accept no new streams.
    GoAway {
        /// Last stream id the sender processed.
        last_good_stream_id: u32,
        /// 0 OK, 1 protocol error, 2 internal error.
        status: u32,
    },
    /// More headers for an open stream.
    Headers {
        /// Stream the headers belong to.
        stream_id: u32,
        /// Sender's last frame on this stream.
        fin: bool,
        /// The headers.
        headers: Headers,
    },
    /// Flow-control credit for a stream.
    WindowUpdate {
        /// Stream receiving credit.
        stream_id: u32,
        /// Extra bytes the receiver may be sent.
        delta: u32,
    },
    /// A control frame type SPDY/3 does not define: the spec says to ignore it.
    Unknown {
        /// Its type code.
        kind: u16,
    },
}

impl Frame {
    /// The stream the frame belongs to, if it belongs to one.
    pub fn stream_id(&self) -> Option<u32> {
        match self {
            Self::Data { stream_id, .. }
            | Self::SynStream { stream_id, .. }
            | Self::SynReply { stream_id, .. }
            | Self::RstStream { stream_id, .. }
            | Self::Headers { stream_id, .. }
            | Self::WindowUpdate { stream_id, .. } => Some(*stream_id),
            Self::Settings { .. }
            | Self::Ping { .. }
            | Self::GoAway { .. }
            | Self::Unknown { .. } => None,
        }
    }
}

/// Shorthand for [`Error::InvalidFrame`].
pub(crate) fn invalid(msg: String) -> Error {
    Error::InvalidFrame(msg)
}

pub(crate) fn push_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

/// Lengths inside a frame are bounded by the 24-bit frame length, so this never clamps
/// for anything we encode; clamping (instead of panicking) keeps the encoder total.
pub(crate) fn len_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Big-endian reader over a frame payload that errors (never panics) on short input.
pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    pub(crate) fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|end| *end <= self.buf.len())
            .ok_or_else(|| invalid(format!("truncated {what}")))?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    pub(crate) fn u32(&mut self, what: &str) -> Result<u32> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }

    pub(crate) fn rest(&mut self) -> &'a [u8] {
        let out = &self.buf[self.pos..];
        self.pos = self.buf.len();
        out
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
}

#[cfg(test)]
mod tests {
    use rstest::rstest;

    use super::*;

    #[rstest]
    #[case::empty(Headers::new())]
    #[case::one(Headers::new().with("streamType", "data"))]
    #[case::port_forward_set(
        Headers::new().with("streamtype", "error").with("port", "8080").with("requestid", "0")
    )]
    #[case::repeated_name_is_nul_joined(Headers::new().with("x", "a").with("x", "b").with("y", ""))]
    fn header_block_round_trips(#[case] headers: Headers) {
        let block = headers.to_block();
        let back = Headers::from_block(&block).expect("decodes");
        let lowered: Vec<_> = headers
            .iter()
            .map(|(n, v)| (n.to_ascii_lowercase(), v.to_owned()))
            .collect();
        let got: Vec<_> = back
            .iter()
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
            .collect();
        assert_eq!(got, lowered);
    }

    #[test]
    fn header_block_matches_spdystream_test_vector() {
        // spdystream spdy_test.go TestParseHeaderValueBlock...: one header "ab" = "c".
        let block = [0, 0, 0, 1, 0, 0, 0, 2, b'a', b'b', 0, 0, 0, 1, b'c'];
        let h = Headers::from_block(&block).expect("decodes");
        assert_eq!(h.get("AB"), Some("c"));
        assert_eq!(Headers::new().with("ab", "c").to_block(), block);
    }

    #[rstest]
    #[case::count_too_large(&[0, 0, 0, 9, 0, 0, 0, 0][..])]
    #[case::truncated_name(&[0, 0, 0, 1, 0, 0, 0, 5, b'a', 0, 0, 0, 0][..])]
    #[case::trailing_bytes(&[0, 0, 0, 0, 1][..])]
    #[case::empty_name(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0][..])]
    #[case::no_count(&[0, 0][..])]
    fn bad_header_blocks_are_errors(#[case] block: &[u8]) {
        assert!(matches!(
            Headers::from_block(block),
            Err(Error::InvalidFrame(_))
        ));
    }

    #[test]
    fn get_is_case_insensitive_and_returns_the_first_value() {
        let h = Headers::new()
            .with("streamType", "data")
            .with("streamtype", "error");
        assert_eq!(h.get("STREAMTYPE"), Some("data"));
        assert_eq!(h.get("port"), None);
    }

    #[rstest]
    #[case::cancel(RstStatus::Cancel, 5)]
    #[case::protocol(RstStatus::ProtocolError, 1)]
    #[case::refused(RstStatus::RefusedStream, 3)]
    #[case::unknown_code_kept(RstStatus::Other(42), 42)]
    fn rst_status_codes(#[case] status: RstStatus, #[case] code: u32) {
        assert_eq!(status.code(), code);
        assert_eq!(RstStatus::from_code(code), status);
    }
}
