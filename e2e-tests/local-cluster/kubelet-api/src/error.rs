//! The crate's error type: what can go wrong starting the server or on one connection.
//!
//! Errors on one connection (a bad SPDY frame, a reset websocket) end that connection
//! only; [`crate::serve`] returns an error only when it cannot start.

use std::io;

/// Everything that can fail in this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// rcgen could not make the self-signed serving certificate.
    #[error("generating the self-signed kubelet serving certificate")]
    CertGen(#[source] rcgen::Error),

    /// rustls rejected the certificate or the protocol configuration.
    #[error("building the kubelet TLS configuration")]
    Tls(#[source] rustls::Error),

    /// The listener has no usable local address.
    #[error("reading the listener's local address")]
    LocalAddr(#[source] io::Error),

    /// Reading or writing a connection (or a log file) failed.
    #[error("i/o error")]
    Io(#[from] io::Error),

    /// The peer sent bytes that are not a valid SPDY/3 frame.
    #[error("invalid SPDY frame: {0}")]
    InvalidFrame(String),

    /// zlib refused to compress a SPDY header block.
    #[error("compressing a SPDY header block")]
    HeaderCompress(#[source] flate2::CompressError),

    /// A SPDY header block is not a zlib stream primed with the SPDY/3 dictionary.
    #[error("decompressing a SPDY header block")]
    HeaderDecompress(#[source] flate2::DecompressError),

    /// The websocket connection failed.
    #[error("websocket error")]
    WebSocket(#[source] tokio_tungstenite::tungstenite::Error),

    /// The HTTP connection failed (before or during an upgrade).
    #[error("http connection error")]
    Http(#[source] hyper::Error),

    /// The other side of an internal channel is gone: the connection is shutting down.
    #[error("the connection is closed")]
    ConnectionClosed,
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
