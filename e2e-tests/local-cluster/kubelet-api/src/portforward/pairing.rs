//! Pairing SPDY port-forward streams: each forwarded connection is a `data` stream and an
//! `error` stream carrying the same `requestID` header; only a complete pair is
//! forwarded. Mirrors `httpStreamHandler` in
//! `k8s.io/cri-streaming/pkg/streaming/portforward/httpstream.go`.

use std::collections::HashMap;

use crate::spdy::Headers;

/// Stream header names used by port-forward (sent lowercase on the wire).
pub const HEADER_STREAM_TYPE: &str = "streamType";
/// Target port header.
pub const HEADER_PORT: &str = "port";
/// Pairs a connection's data and error streams.
pub const HEADER_REQUEST_ID: &str = "requestID";

/// Which half of a pair a stream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// Bytes to and from the pod port.
    Data,
    /// Forwarding errors as text, from us to the client.
    Error,
}

impl StreamKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Data => "data",
            Self::Error => "error",
        }
    }
}

/// What a port-forward stream's headers say; the session's accept step produces it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamMeta {
    /// Data or error.
    pub kind: StreamKind,
    /// Pod port.
    pub port: u16,
    /// The pairing key.
    pub request_id: String,
}

/// Validates a new stream's headers like `httpStreamReceived` (rejections reset the
/// stream) and derives its request id.
pub fn stream_meta(stream_id: u32, headers: &Headers) -> Result<StreamMeta, String> {
    let port_str = headers
        .get(HEADER_PORT)
        .filter(|p| !p.is_empty())
        .ok_or_else(|| format!("{HEADER_PORT:?} header is required"))?;
    let port: u16 = port_str
        .parse()
        .map_err(|e| format!("unable to parse {port_str:?} as a port: {e}"))?;
    if port < 1 {
        return Err(format!("port {port_str:?} must be > 0"));
    }
    let kind = match headers.get(HEADER_STREAM_TYPE) {
        None | Some("") => return Err(format!("{HEADER_STREAM_TYPE:?} header is required")),
        Some("data") => StreamKind::Data,
        Some("error") => StreamKind::Error,
        Some(other) => return Err(format!("invalid stream type {other:?}")),
    };
    Ok(StreamMeta {
        kind,
        port,
        request_id: request_id(stream_id, kind, headers),
    })
}

/// The `requestID` header, or — for clients too old to send one — the kubelet's guess:
/// an error stream's own id, a data stream's id minus 2 (pairs are consecutive odd ids
/// when connections are not opened concurrently).
pub fn request_id(stream_id: u32, kind: StreamKind, headers: &Headers) -> String {
    match headers.get(HEADER_REQUEST_ID) {
        Some(id) if !id.is_empty() => id.to_owned(),
        _ => match kind {
            StreamKind::Error => stream_id.to_string(),
            StreamKind::Data => (i64::from(stream_id) - 2).to_string(),
        },
    }
}

/// What [`PairTable::add`] did with a stream.
#[derive(Debug)]
pub enum Added<S> {
    /// First half of a pair; `new` is true when the request id was not seen before
    /// (the caller starts the pair's creation timeout then).
    Waiting {
        /// A new pending pair was created.
        new: bool,
    },
    /// Both halves are here: forward.
    Complete {
        /// The data stream.
        data: S,
        /// The error stream.
        error: S,
    },
    /// The pair already has a stream of this kind; the extra one is handed back with the
    /// kubelet's error message.
    Duplicate {
        /// The rejected stream.
        stream: S,
        /// `"data stream already assigned"` / `"error stream already assigned"`.
        message: String,
    },
}

/// A half-built pair.
#[derive(Debug)]
struct Pending<S> {
    data: Option<S>,
    error: Option<S>,
}

/// Pending pairs by request id.
#[derive(Debug)]
pub struct PairTable<S> {
    pending: HashMap<String, Pending<S>>,
}

impl<S> Default for PairTable<S> {
    fn default() -> Self {
        Self {
            pending: HashMap::new(),
        }
    }
}

impl<S> PairTable<S> {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a stream to the pair of `request_id`.
    pub fn add(&mut self, request_id: &str, kind: StreamKind, stream: S) -> Added<S> {
        let new = !self.pending.contains_key(request_id);
        let pending = self
            .pending
            .entry(request_id.to_owned())
            .or_insert(Pending {
                data: None,
                error: None,
            });
        let slot = match kind {
            StreamKind::Data => &mut pending.data,
            StreamKind::Error => &mut pending.error,
        };
        if slot.is_some() {
            return Added::Duplicate {
                stream,
                message: format!("{} stream already assigned", kind.as_str()),
            };
        }
        *slot = Some(stream);
        if pending.data.is_some()
            && pending.error.is_some()
            && let Some(Pending {
                data: Some(data),
                error: Some(error),
            }) = self.pending.remove(request_id)
        {
            return Added::Complete { data, error };
        }
        Added::Waiting { new }
    }

    /// Gives up on an incomplete pair (creation timeout): returns its halves, or `None`
    /// if it completed meanwhile.
    pub fn expire(&mut self, request_id: &str) -> Option<(Option<S>, Option<S>)> {
        self.pending.remove(request_id).map(|p| (p.data, p.error))
    }

    /// The pending error stream of a pair, to report a problem on it.
    pub fn error_stream(&self, request_id: &str) -> Option<&S> {
        self.pending.get(request_id).and_then(|p| p.error.as_ref())
    }

    /// Number of incomplete pairs.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// No incomplete pairs.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Removes and returns every incomplete pair (session end).
    pub fn drain(&mut self) -> Vec<(Option<S>, Option<S>)> {
        self.pending
            .drain()
            .map(|(_, p)| (p.data, p.error))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use rstest::rstest;

    use super::*;

    fn h(pairs: &[(&str, &str)]) -> Headers {
        pairs.iter().fold(Headers::new(), |h, (n, v)| h.with(n, v))
    }

    #[rstest]
    #[case::data(1, &[("streamType", "data"), ("port", "8080"), ("requestID", "7")], Ok(StreamMeta { kind: StreamKind::Data, port: 8080, request_id: "7".into() }))]
    #[case::error_lowercase_names(3, &[("streamtype", "error"), ("port", "1"), ("requestid", "0")], Ok(StreamMeta { kind: StreamKind::Error, port: 1, request_id: "0".into() }))]
    #[case::legacy_error_uses_own_id(5, &[("streamType", "error"), ("port", "80")], Ok(StreamMeta { kind: StreamKind::Error, port: 80, request_id: "5".into() }))]
    #[case::legacy_data_uses_id_minus_two(7, &[("streamType", "data"), ("port", "80")], Ok(StreamMeta { kind: StreamKind::Data, port: 80, request_id: "5".into() }))]
    #[case::no_port(1, &[("streamType", "data")], Err(()))]
    #[case::port_zero(1, &[("streamType", "data"), ("port", "0")], Err(()))]
    #[case::port_not_a_number(1, &[("streamType", "data"), ("port", "http")], Err(()))]
    #[case::no_type(1, &[("port", "80")], Err(()))]
    #[case::bad_type(1, &[("streamType", "stdin"), ("port", "80")], Err(()))]
    fn stream_headers(
        #[case] id: u32,
        #[case] headers: &[(&str, &str)],
        #[case] want: Result<StreamMeta, ()>,
    ) {
        assert_eq!(stream_meta(id, &h(headers)).map_err(|_| ()), want);
    }

    #[test]
    fn legacy_ids_pair_consecutive_streams() {
        let error = stream_meta(1, &h(&[("streamType", "error"), ("port", "80")])).expect("ok");
        let data = stream_meta(3, &h(&[("streamType", "data"), ("port", "80")])).expect("ok");
        assert_eq!(error.request_id, data.request_id);
    }

    #[rstest]
    #[case::error_then_data(StreamKind::Error, StreamKind::Data)]
    #[case::data_then_error(StreamKind::Data, StreamKind::Error)]
    fn pairs_complete_in_either_order(#[case] first: StreamKind, #[case] second: StreamKind) {
        let mut t = PairTable::new();
        assert!(matches!(
            t.add("1", first, first),
            Added::Waiting { new: true }
        ));
        match t.add("1", second, second) {
            Added::Complete { data, error } => {
                assert_eq!((data, error), (StreamKind::Data, StreamKind::Error));
            }
            other => panic!("{other:?}"),
        }
        assert!(t.is_empty(), "a complete pair leaves the table");
    }

    #[test]
    fn interleaved_requests_pair_by_id() {
        let mut t = PairTable::new();
        assert!(matches!(
            t.add("a", StreamKind::Error, "a-err"),
            Added::Waiting { new: true }
        ));
        assert!(matches!(
            t.add("b", StreamKind::Error, "b-err"),
            Added::Waiting { new: true }
        ));
        assert!(matches!(
            t.add("b", StreamKind::Data, "b-data"),
            Added::Complete {
                data: "b-data",
                error: "b-err"
            }
        ));
        assert!(matches!(
            t.add("a", StreamKind::Data, "a-data"),
            Added::Complete {
                data: "a-data",
                error: "a-err"
            }
        ));
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn duplicate_half_is_rejected_and_pair_kept() {
        let mut t = PairTable::new();
        let _ = t.add("1", StreamKind::Error, 1);
        match t.add("1", StreamKind::Error, 2) {
            Added::Duplicate { stream, message } => {
                assert_eq!(stream, 2);
                assert_eq!(message, "error stream already assigned");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(t.error_stream("1"), Some(&1));
        assert!(matches!(
            t.add("1", StreamKind::Data, 3),
            Added::Complete { data: 3, error: 1 }
        ));
    }

    #[test]
    fn expire_returns_the_waiting_half_once() {
        let mut t = PairTable::new();
        let _ = t.add("9", StreamKind::Data, "d");
        assert_eq!(t.expire("9"), Some((Some("d"), None)));
        assert_eq!(t.expire("9"), None);
        // A request id can be reused after expiry.
        assert!(matches!(
            t.add("9", StreamKind::Error, "e"),
            Added::Waiting { new: true }
        ));
        assert_eq!(t.drain(), vec![(None, Some("e"))]);
    }
}
