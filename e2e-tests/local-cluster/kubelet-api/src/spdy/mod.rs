//! SPDY/3.1 as Kubernetes uses it: the framing layer under `kubectl port-forward`.
//!
//! Kubernetes still speaks SPDY/3.1 (via `github.com/moby/spdystream`) between clients,
//! the apiserver and the kubelet. Only the server half is here: the client opens
//! streams, we accept them ([`session`]). The frame codec ([`frame`], [`codec`]) is
//! complete, including the zlib header compression primed with the SPDY/3 dictionary.

pub mod codec;
mod dictionary;
pub mod frame;
pub mod session;
#[cfg(test)]
pub(crate) mod test_client;

pub use codec::{FrameDecoder, FrameEncoder};
pub use frame::{Frame, Headers, RstStatus, Setting};
