//! The interruptions a shell turns into the `interrupt` future of the library's verbs:
//! SIGINT (Ctrl-C), SIGTERM and SIGHUP, with the handlers installed when asked for, so an
//! interruption before anything exists is not lost.

use crate::{Error, Result};
use std::future::Future;
use tokio::signal::unix::{SignalKind, signal};

/// Installs the handlers now; the future completes with the signal's name when one comes.
pub fn shutdown_signal() -> Result<impl Future<Output = String> + Send> {
    let mut term = signal(SignalKind::terminate())
        .map_err(|e| Error::io("installing the SIGTERM handler", e))?;
    let mut int = signal(SignalKind::interrupt())
        .map_err(|e| Error::io("installing the SIGINT handler", e))?;
    let mut hup =
        signal(SignalKind::hangup()).map_err(|e| Error::io("installing the SIGHUP handler", e))?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => "SIGTERM".to_owned(),
            _ = int.recv() => "SIGINT".to_owned(),
            _ = hup.recv() => "SIGHUP".to_owned(),
        }
    })
}
