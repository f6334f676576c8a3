//! The HTTP stack under dask-kube's `kube::Client`: HTTP/2 to the API server for every
//! ordinary call, so hundreds of concurrent pod creations share one TLS connection as
//! multiplexed streams (kube's default client speaks HTTP/1 only, one connection per call
//! in flight), and HTTP/1.1 for the calls that upgrade the connection (port-forward over
//! websocket), which HTTP/2 cannot carry. Authentication, the base URI and extra headers
//! are kube's own layers, so every credential kube supports works here.

use crate::{Error, Result};
use futures::future::BoxFuture;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kube::client::{Body, ConfigExt};
use kube::{Client, Config};
use std::task::{Context, Poll};
use tower::{BoxError, ServiceBuilder, ServiceExt};

type Https = hyper_rustls::HttpsConnector<HttpConnector>;

/// Routes a request to the HTTP/2 client, or to the HTTP/1.1 one when it asks for a
/// protocol upgrade.
#[derive(Clone)]
struct ByUpgrade {
    http2: HyperClient<Https, Body>,
    http1: HyperClient<Https, Body>,
}

impl tower::Service<http::Request<Body>> for ByUpgrade {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = BoxError;
    type Future = BoxFuture<'static, std::result::Result<Self::Response, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<std::result::Result<(), BoxError>> {
        // Both pools accept requests at any time; backpressure is dask-kube's flow control.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let client = if request.headers().contains_key(http::header::UPGRADE) {
            self.http1.clone()
        } else {
            self.http2.clone()
        };
        Box::pin(async move { client.oneshot(request).await.map_err(BoxError::from) })
    }
}

fn hyper_client(config: &Config, http2: bool) -> Result<HyperClient<Https, Body>> {
    let tls = config.rustls_client_config().map_err(credentials)?;
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(config.connect_timeout);
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    let mut client = HyperClient::builder(TokioExecutor::new());
    let connector = if http2 {
        client.http2_only(true);
        builder.enable_http2().wrap_connector(http)
    } else {
        builder.enable_http1().wrap_connector(http)
    };
    Ok(client.build(connector))
}

fn credentials(e: kube::Error) -> Error {
    Error::Credentials {
        reason: e.to_string(),
    }
}

/// A `kube::Client` for `config` that speaks HTTP/2 to the API server (HTTP/1.1 for
/// upgrades). A plain-HTTP server URL (tests against a local proxy) keeps working: h2 needs
/// TLS here, so such a URL gets kube's default client.
pub fn build_client(config: Config) -> Result<Client> {
    if config.cluster_url.scheme() != Some(&http::uri::Scheme::HTTPS) {
        return Client::try_from(config).map_err(credentials);
    }
    let router = ByUpgrade {
        http2: hyper_client(&config, true)?,
        http1: hyper_client(&config, false)?,
    };
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(config.auth_layer().map_err(credentials)?)
        .layer(config.extra_headers_layer().map_err(credentials)?)
        .service(router);
    Ok(Client::new(service, config.default_namespace))
}
