//! The webhook over real HTTPS on loopback with the real compiled policy: an
//! AdmissionReview round trip, readiness, and the error answers; and `policy-runner
//! serve` itself, applying an annotated module's `mutating` as policy-server does.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use policy_runner::admission::{AdmissionResponse, parse_request_document};
use policy_runner::evaluator::{Evaluator, PolicyModule};
use policy_runner::serve::{self, Webhook};
use policy_runner::settings::Settings;
use policy_runner::{locate, tls};
use rustls::pki_types::ServerName;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const POLICY: &str = "dask-worker-defaults";

/// One request on its own TLS connection, trusting only the webhook's CA.
async fn https(
    addr: SocketAddr,
    ca: &Path,
    method: Method,
    path: &str,
    body: Vec<u8>,
) -> anyhow::Result<(StatusCode, Bytes)> {
    let connector = TlsConnector::from(tls::client_config(ca)?);
    let tcp = TcpStream::connect(addr).await?;
    // The apiserver dials the IP from clientConfig.url: verify the IP SAN, as it does.
    let stream = connector.connect(ServerName::from(addr.ip()), tcp).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let conn = tokio::spawn(conn);
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, addr.to_string())
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    drop(sender);
    conn.await??;
    Ok((status, body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_review_round_trip_over_https() -> anyhow::Result<()> {
    let wasm = locate::policy_module()?;
    let evaluator = tokio::task::spawn_blocking(move || -> anyhow::Result<Evaluator> {
        let module = Arc::new(PolicyModule::from_file(&wasm)?);
        Ok(Evaluator::new(module, Settings::empty())?)
    })
    .await??;
    let evaluator = Arc::new(evaluator);

    let certs_dir = tempfile::tempdir()?;
    let certs = tls::ensure_certs(certs_dir.path())?;
    let listener = serve::bind("127.0.0.1:0".parse()?).await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve::run(
        listener,
        tls::server_config(&certs)?,
        Arc::new(Webhook::new(Arc::clone(&evaluator), POLICY)),
        async {
            let _ = stopped.await;
        },
    ));

    let (status, _) = https(addr, &certs.ca_cert, Method::GET, "/readiness", Vec::new()).await?;
    assert_eq!(status, StatusCode::OK);

    // The apiserver appends ?timeout=<n>s to the configured path.
    let review_bytes = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/worker-pod-create-review.json"),
    )?;
    let path = format!("/validate/{POLICY}?timeout=2s");
    let (status, body) = https(
        addr,
        &certs.ca_cert,
        Method::POST,
        &path,
        review_bytes.clone(),
    )
    .await?;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let answer: Value = serde_json::from_slice(&body)?;
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(answer["kind"], "AdmissionReview");
    let response: AdmissionResponse = serde_json::from_value(answer["response"].clone())?;

    // Same evaluation path as `run`: identical response, uid echoed, patched.
    let (request, _) = parse_request_document(&review_bytes)?;
    let expected = tokio::task::spawn_blocking(move || evaluator.evaluate(&request)).await?;
    assert_eq!(response, expected);
    assert_eq!(response.uid, "1f0c6c5e-7a36-4b8e-9d55-3a3b1c7e0001");
    assert!(response.allowed && response.patch.is_some(), "{response:?}");

    // /mutate is the same endpoint.
    let (status, body) = https(addr, &certs.ca_cert, Method::POST, "/mutate", review_bytes).await?;
    assert_eq!(status, StatusCode::OK);
    let again: Value = serde_json::from_slice(&body)?;
    assert_eq!(again["response"], answer["response"]);

    let (status, body) = https(
        addr,
        &certs.ca_cert,
        Method::POST,
        &path,
        b"{\"kind\":".to_vec(),
    )
    .await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        String::from_utf8_lossy(&body).starts_with("malformed AdmissionReview: "),
        "{body:?}"
    );

    let (status, _) = https(
        addr,
        &certs.ca_cert,
        Method::POST,
        "/validate/other",
        b"{}".to_vec(),
    )
    .await?;
    assert_eq!(status, StatusCode::NOT_FOUND);

    stop.send(())
        .map_err(|()| anyhow::anyhow!("server already stopped"))?;
    server.await??;
    Ok(())
}

#[tokio::test]
async fn untrusted_client_cannot_talk_to_the_webhook() -> anyhow::Result<()> {
    // A CA from another cert dir must not validate this server's certificate.
    let server_dir = tempfile::tempdir()?;
    let other_dir = tempfile::tempdir()?;
    let certs = tls::ensure_certs(server_dir.path())?;
    let other = tls::ensure_certs(other_dir.path())?;
    let listener = serve::bind("127.0.0.1:0".parse()?).await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let wasm = locate::policy_module()?;
    let evaluator = tokio::task::spawn_blocking(move || -> anyhow::Result<Evaluator> {
        Ok(Evaluator::new(
            Arc::new(PolicyModule::from_file(&wasm)?),
            Settings::empty(),
        )?)
    })
    .await??;
    let server = tokio::spawn(serve::run(
        listener,
        tls::server_config(&certs)?,
        Arc::new(Webhook::new(Arc::new(evaluator), POLICY)),
        async {
            let _ = stopped.await;
        },
    ));
    let result = https(addr, &other.ca_cert, Method::GET, "/readiness", Vec::new()).await;
    assert!(result.is_err(), "handshake must fail: {result:?}");
    stop.send(())
        .map_err(|()| anyhow::anyhow!("server already stopped"))?;
    server.await??;
    Ok(())
}

/// `policy-runner serve` on loopback (port chosen by the OS, read from its log line),
/// killed when dropped.
struct ServeProcess {
    child: std::process::Child,
    addr: SocketAddr,
    _certs: tempfile::TempDir,
    ca: std::path::PathBuf,
}

impl ServeProcess {
    fn start(module: &Path) -> anyhow::Result<Self> {
        use std::io::BufRead as _;
        let certs = tempfile::tempdir()?;
        let mut child = std::process::Command::new(common::BIN)
            .arg("serve")
            .arg("--module")
            .arg(module)
            .args(["--listen", "127.0.0.1:0", "--cert-dir"])
            .arg(certs.path())
            .env_remove("DASK_POLICY_WASM")
            .env_remove("POLICY_RUNNER_LOG")
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        let stderr = child
            .stderr
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stderr"))?;
        let mut lines = std::io::BufReader::new(stderr).lines();
        let addr = loop {
            let Some(line) = lines.next().transpose()? else {
                let status = child.wait()?;
                anyhow::bail!("serve exited ({status}) before listening");
            };
            if !line.contains("webhook listening") {
                continue;
            }
            let local = line
                .split_whitespace()
                .find_map(|field| field.strip_prefix("local="))
                .ok_or_else(|| anyhow::anyhow!("no local= in {line:?}"))?;
            break local.parse::<SocketAddr>()?;
        };
        // Keep draining the log so the server never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        let ca = certs.path().join("ca.crt");
        Ok(Self {
            child,
            addr,
            _certs: certs,
            ca,
        })
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug, Clone, Copy)]
enum ServedModule {
    Plain,
    Annotated,
    AnnotatedNotMutating,
}

/// policy-server turns a patch of a policy not allowed to mutate into a rejection; an
/// annotated module says through its `mutating` whether it is, a plain one may mutate.
#[rstest::rstest]
#[case::plain_module_may_mutate(ServedModule::Plain, None)]
#[case::annotated_mutating_policy(ServedModule::Annotated, None)]
#[case::annotated_not_mutating_policy(
    ServedModule::AnnotatedNotMutating,
    Some(
        "The policy attempted to mutate the request, but it is currently configured to not allow mutations."
    )
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_applies_the_annotated_modules_mutating_flag(
    #[case] served: ServedModule,
    #[case] rejection: Option<&str>,
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let module = match served {
        ServedModule::Plain => common::plain_module()?,
        ServedModule::Annotated => common::annotated_module()?,
        ServedModule::AnnotatedNotMutating => {
            let output = dir.path().join("not-mutating.wasm");
            let metadata = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/metadata-not-mutating.yml");
            common::annotate(&common::plain_module()?, &metadata, &output)?;
            output
        }
    };
    let server = tokio::task::spawn_blocking(move || ServeProcess::start(&module)).await??;
    let review = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/worker-pod-create-review.json"),
    )?;
    let (status, body) = https(
        server.addr,
        &server.ca,
        Method::POST,
        &format!("/validate/{POLICY}"),
        review,
    )
    .await?;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let answer: Value = serde_json::from_slice(&body)?;
    let response: AdmissionResponse = serde_json::from_value(answer["response"].clone())?;
    match rejection {
        None => assert!(response.allowed && response.patch.is_some(), "{response:?}"),
        Some(reason) => {
            assert!(!response.allowed, "{response:?}");
            assert_eq!(response.patch, None);
            let message = response.status.and_then(|s| s.message).unwrap_or_default();
            assert!(message.contains(reason), "{message}");
        }
    }
    Ok(())
}
