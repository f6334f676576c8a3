//! Reaching the scheduler from outside the cluster: each TCP connection a Dask client makes
//! to a local listener on 127.0.0.1 is carried over its own kube-rs port-forward stream to
//! the scheduler pod, and the HTTP API (8787) goes over port-forward streams too.

use crate::scheduler_api::Connect;
use crate::{Error, Result};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Opens port-forward streams to one port of one pod.
#[derive(Clone)]
pub struct PodPortConnect {
    pods: Api<Pod>,
    pod: String,
    port: u16,
}

impl PodPortConnect {
    /// Streams to `pod:port` through the API server.
    pub fn new(pods: Api<Pod>, pod: impl Into<String>, port: u16) -> Self {
        PodPortConnect {
            pods,
            pod: pod.into(),
            port,
        }
    }
}

/// A port-forwarded stream; holds the forwarder so the stream lives as long as it is used.
pub struct ForwardedStream {
    stream: DuplexStream,
    _forwarder: kube::api::Portforwarder,
}

impl AsyncRead for ForwardedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for ForwardedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

impl Connect for PodPortConnect {
    type Io = ForwardedStream;

    async fn connect(&self) -> Result<ForwardedStream> {
        let fail = |reason: String| Error::PortForward {
            pod: self.pod.clone(),
            port: self.port,
            reason,
        };
        let mut forwarder = self
            .pods
            .portforward(&self.pod, &[self.port])
            .await
            .map_err(|e| {
                let namespace = self.pods.namespace().unwrap_or_default();
                match crate::apiserver::errors::forbidden(
                    &e,
                    "create",
                    "pods/portforward",
                    namespace,
                ) {
                    // Not worth retrying: name the missing permission at once.
                    Some(forbidden) => forbidden,
                    None => fail(crate::apiserver::errors::describe_kube_error(&e)),
                }
            })?;
        let stream = forwarder
            .take_stream(self.port)
            .ok_or_else(|| fail("no stream for the port".into()))?;
        if let Some(errors) = forwarder.take_error(self.port) {
            let (pod, port) = (self.pod.clone(), self.port);
            tokio::spawn(async move {
                // Expected while the scheduler starts (connection refused); the caller retries
                // and reports what finally fails.
                if let Some(message) = errors.await {
                    debug!(%pod, port, %message, "port-forward error");
                }
            });
        }
        Ok(ForwardedStream {
            stream,
            _forwarder: forwarder,
        })
    }

    fn describe(&self) -> String {
        format!("pod/{}:{} via port-forward", self.pod, self.port)
    }
}

/// A local TCP listener whose connections are forwarded through a [`Connect`]or.
pub struct LocalForwarder {
    address: SocketAddr,
    cancel: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl LocalForwarder {
    /// Binds `bind` (port 0 picks one) and forwards every accepted connection.
    pub async fn start<C: Connect>(bind: SocketAddr, connector: C) -> Result<Self> {
        let listener = TcpListener::bind(bind)
            .await
            .map_err(|e| Error::io(format!("binding the local scheduler port {bind}"), e))?;
        let address = listener
            .local_addr()
            .map_err(|e| Error::io("reading the local scheduler port", e))?;
        let cancel = CancellationToken::new();
        let connector = Arc::new(connector);
        let token = cancel.clone();
        let task = tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = token.cancelled() => break,
                    accepted = listener.accept() => accepted,
                };
                let (mut inbound, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        warn!(error = %e, "accepting a local connection failed");
                        continue;
                    }
                };
                let connector = connector.clone();
                let token = token.clone();
                tokio::spawn(async move {
                    let mut outbound = match connector.connect().await {
                        Ok(s) => s,
                        Err(e) => {
                            warn!(%peer, error = %e, "cannot forward connection");
                            return;
                        }
                    };
                    debug!(%peer, to = %connector.describe(), "forwarding connection");
                    tokio::select! {
                        () = token.cancelled() => {}
                        result = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {
                            if let Err(e) = result {
                                debug!(%peer, error = %e, "forwarded connection ended");
                            }
                        }
                    }
                });
            }
        });
        info!(%address, "listening for scheduler connections");
        Ok(LocalForwarder {
            address,
            cancel,
            task: Some(task),
        })
    }

    /// The local address (`127.0.0.1:<port>`).
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Stops listening and closes forwarded connections.
    pub async fn stop(mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for LocalForwarder {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler_api::TcpConnect;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn forwards_each_connection_both_ways() {
        // An echo server stands in for the scheduler; the forwarder connects with TCP.
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let echo_addr = echo.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = echo.accept().await.unwrap();
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        let forwarder = LocalForwarder::start(
            "127.0.0.1:0".parse().unwrap(),
            TcpConnect {
                address: echo_addr.to_string(),
            },
        )
        .await
        .unwrap();
        for message in [&b"first"[..], &b"second connection"[..]] {
            let mut client = tokio::net::TcpStream::connect(forwarder.address())
                .await
                .unwrap();
            client.write_all(message).await.unwrap();
            let mut back = vec![0; message.len()];
            client.read_exact(&mut back).await.unwrap();
            assert_eq!(back, message);
        }
        let address = forwarder.address();
        forwarder.stop().await;
        assert!(
            tokio::net::TcpStream::connect(address).await.is_err(),
            "stopped listener still accepts"
        );
    }

    #[tokio::test]
    async fn unreachable_target_closes_the_client_connection() {
        let closed = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let forwarder = LocalForwarder::start(
            "127.0.0.1:0".parse().unwrap(),
            TcpConnect {
                address: closed.to_string(),
            },
        )
        .await
        .unwrap();
        let mut client = tokio::net::TcpStream::connect(forwarder.address())
            .await
            .unwrap();
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(std::time::Duration::from_secs(10), client.read(&mut buf))
            .await
            .expect("the forwarder closes the connection")
            .unwrap_or(0);
        assert_eq!(n, 0);
    }
}
