//! End to end through the REAL kube-apiserver of `e2e-tests/local-cluster`: kube-rs and
//! kubectl talk to the apiserver, the apiserver talks to our kubelet endpoints (found via
//! a Node object), and our endpoints talk to a log file and a loopback echo "pod".
//!
//! Needs `e2e-tests/local-cluster/cluster up` (or `DASK_K8S_STATE_DIR`/`KUBECONFIG`
//! pointing at a running one); `#[ignore]`d outside the integration tier.
//! Throughput lines are printed (`--nocapture`), never asserted.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::{AsyncBufReadExt, StreamExt, TryStreamExt};
use kube::api::LogParams;
use support::{
    BANNER, CONTAINER, Cluster, Fixture, NAMESPACE, WAIT, append, banner_server, captured_logs,
    closed_port, echo_round_trip, echo_server, kubectl, median, payload, read_all,
};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

fn params(f: impl FnOnce(&mut LogParams)) -> LogParams {
    let mut lp = LogParams {
        container: Some(CONTAINER.into()),
        ..LogParams::default()
    };
    f(&mut lp);
    lp
}

fn api_error_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs the local cluster; e2e-tests/run-integration.sh runs it with --ignored"]
async fn kube_rs_logs_through_the_apiserver() -> anyhow::Result<()> {
    let cluster = Cluster::connect("kube_rs_logs_through_the_apiserver").await;
    let fx = Fixture::start(cluster).await?;
    let content = "first line\nsecond line\nthird line\n";
    let (pod, log) = fx.pod("logs", Some(content)).await?;
    let api = fx.pod_api();

    // Cases: (params, expected body).
    let cases: Vec<(&str, LogParams, String)> = vec![
        ("whole file", params(|_| {}), content.to_owned()),
        (
            "tailLines=2",
            params(|p| p.tail_lines = Some(2)),
            "second line\nthird line\n".into(),
        ),
        (
            "tailLines=0",
            params(|p| p.tail_lines = Some(0)),
            String::new(),
        ),
        (
            "limitBytes=8",
            params(|p| p.limit_bytes = Some(8)),
            "first li".into(),
        ),
        (
            "sinceSeconds covers the file",
            params(|p| p.since_seconds = Some(3600)),
            content.into(),
        ),
    ];
    for (name, lp, want) in cases {
        let got = api.logs(&pod, &lp).await.with_context(|| name.to_owned())?;
        assert_eq!(got, want, "{name}");
    }

    // timestamps=true: every line gets the kubelet's fixed-width RFC 3339 prefix.
    let stamped = api.logs(&pod, &params(|p| p.timestamps = true)).await?;
    for (line, want) in stamped.lines().zip(content.lines()) {
        let (ts, rest) = line.split_once(' ').expect("timestamp prefix");
        assert_eq!(rest, want);
        assert_eq!(ts.len(), "2006-01-02T15:04:05.000000000Z".len(), "{ts}");
        ts.parse::<jiff::Timestamp>().expect("RFC 3339 timestamp");
    }

    // follow: the existing lines, then an appended one, then the end once the
    // container stops.
    let stream = api.log_stream(&pod, &params(|p| p.follow = true)).await?;
    let mut lines = stream.lines();
    for want in content.lines() {
        let got = tokio::time::timeout(WAIT, lines.next())
            .await?
            .expect("a line")?;
        assert_eq!(got, want);
    }
    append(&log, "appended while following\n");
    let got = tokio::time::timeout(WAIT, lines.next())
        .await?
        .expect("the appended line")?;
    assert_eq!(got, "appended while following");
    append(&log, "last words");
    fx.pods.set_running(&pod, false);
    let rest: Vec<String> = tokio::time::timeout(WAIT, lines.try_collect()).await??;
    assert_eq!(
        rest,
        vec!["last words".to_owned()],
        "follow ends after the unterminated last line"
    );

    // --previous without a previous run: the kubelet's 400.
    let err = api
        .logs(&pod, &params(|p| p.previous = true))
        .await
        .expect_err("no previous run");
    assert_eq!(api_error_code(&err), Some(400), "{err}");
    assert!(
        err.to_string().contains("previous terminated container"),
        "{err}"
    );
    let prev = fx.dir.path().join("previous.log");
    std::fs::write(&prev, "from the run before\n")?;
    fx.pods.set_previous_log(&pod, CONTAINER, &prev);
    assert_eq!(
        api.logs(&pod, &params(|p| p.previous = true)).await?,
        "from the run before\n"
    );

    // A pod the apiserver knows but our node does not: the kubelet's 404 comes through
    // as a NotFound (the apiserver replaces a 404's body with its generic message; our
    // body text is checked directly in `healthz_and_unknown_paths_directly`).
    let (unknown, _) = fx.pod("unknown", None).await?;
    let err = api
        .logs(&unknown, &params(|_| {}))
        .await
        .expect_err("no log");
    assert_eq!(api_error_code(&err), Some(404), "{err}");

    fx.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs the local cluster; e2e-tests/run-integration.sh runs it with --ignored"]
async fn kubectl_logs_and_follow() -> anyhow::Result<()> {
    let cluster = Cluster::connect("kubectl_logs_and_follow").await;
    let fx = Fixture::start(cluster).await?;
    let (pod, log) = fx.pod("kubectl-logs", Some("one\ntwo\nthree\n")).await?;
    let kc = fx.cluster.kubeconfig.display().to_string();

    let out = Command::new(kubectl())
        .args([
            "--kubeconfig",
            &kc,
            "-n",
            NAMESPACE,
            "logs",
            &pod,
            "-c",
            CONTAINER,
            "--tail=2",
        ])
        .output()
        .await?;
    assert!(
        out.status.success(),
        "kubectl logs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8(out.stdout)?, "two\nthree\n");

    let mut child = Command::new(kubectl())
        .args([
            "--kubeconfig",
            &kc,
            "-n",
            NAMESPACE,
            "logs",
            "-f",
            &pod,
            "-c",
            CONTAINER,
        ])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut out = BufReader::new(child.stdout.take().expect("stdout")).lines();
    for want in ["one", "two", "three"] {
        assert_eq!(
            tokio::time::timeout(WAIT, out.next_line())
                .await??
                .as_deref(),
            Some(want)
        );
    }
    append(&log, "four\n");
    assert_eq!(
        tokio::time::timeout(WAIT, out.next_line())
            .await??
            .as_deref(),
        Some("four")
    );
    fx.pods.set_running(&pod, false);
    assert_eq!(
        tokio::time::timeout(WAIT, out.next_line()).await??,
        None,
        "stream ends"
    );
    let status = tokio::time::timeout(WAIT, child.wait()).await??;
    assert!(
        status.success(),
        "kubectl logs -f exits 0 when the container stops: {status}"
    );

    fx.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs the local cluster; e2e-tests/run-integration.sh runs it with --ignored"]
async fn kube_rs_portforward_through_the_apiserver() -> anyhow::Result<()> {
    let cluster = Cluster::connect("kube_rs_portforward_through_the_apiserver").await;
    let fx = Fixture::start(cluster).await?;
    let (pod, _) = fx.pod("pf-rs", None).await?;
    let echo = echo_server().await?;
    let api = fx.pod_api();

    // One small round trip.
    let mut pf = api.portforward(&pod, &[echo]).await?;
    let stream = pf.take_stream(echo).expect("stream");
    assert_eq!(
        echo_round_trip(stream, b"hello through the apiserver", false).await?,
        b"hello through the apiserver"
    );
    drop(pf);

    // Several connections at once, each with a few MB (far beyond any 64 KiB window).
    let jobs = (0..4u64).map(|i| {
        let api = api.clone();
        let pod = pod.clone();
        async move {
            let data = payload(3 * 1024 * 1024 + i as usize, i);
            let mut pf = api.portforward(&pod, &[echo]).await?;
            let got = echo_round_trip(pf.take_stream(echo).expect("stream"), &data, false).await?;
            anyhow::ensure!(got == data, "connection {i}: echo differs");
            Ok::<_, anyhow::Error>(())
        }
    });
    futures::future::try_join_all(jobs).await?;

    // Two ports on one websocket (channels 0/1 and 2/3).
    let echo2 = echo_server().await?;
    let mut pf = api.portforward(&pod, &[echo, echo2]).await?;
    let (a, b) = (
        pf.take_stream(echo).expect("a"),
        pf.take_stream(echo2).expect("b"),
    );
    let (ra, rb) = tokio::try_join!(
        echo_round_trip(a, b"port a", false),
        echo_round_trip(b, b"port b", false)
    )?;
    assert_eq!(
        (ra.as_slice(), rb.as_slice()),
        (&b"port a"[..], &b"port b"[..])
    );
    drop(pf);

    // The pod hangs up first: its bytes, then EOF (the websocket closes).
    let banner = banner_server().await?;
    let mut pf = api.portforward(&pod, &[banner]).await?;
    assert_eq!(
        read_all(pf.take_stream(banner).expect("stream")).await?,
        BANNER
    );
    drop(pf);

    // Nothing listening: the kubelet's message arrives on the error channel.
    let closed = closed_port().await?;
    let mut pf = api.portforward(&pod, &[closed]).await?;
    let err = tokio::time::timeout(WAIT, pf.take_error(closed).expect("error channel"))
        .await?
        .expect("an error message");
    assert!(
        err.contains(&format!(
            "error forwarding port {closed} to pod {NAMESPACE}/{pod}"
        )),
        "{err}"
    );
    drop(pf);

    // The apiserver proxied kube-rs' websocket to us as is.
    let logs = captured_logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("port-forward connection opened")
                && l.contains(&format!("pod={NAMESPACE}/{pod}"))
                && l.contains("websocket=true")),
        "no websocket port-forward seen for {pod}:\n{logs}"
    );

    // Throughput: median of 3 echo round trips of 32 MiB.
    let data = payload(32 * 1024 * 1024, 42);
    let mut rates = Vec::new();
    for _ in 0..3 {
        let mut pf = api.portforward(&pod, &[echo]).await?;
        let start = Instant::now();
        let got = echo_round_trip(pf.take_stream(echo).expect("stream"), &data, false).await?;
        rates.push(data.len() as f64 / 1e6 / start.elapsed().as_secs_f64());
        assert!(got == data);
    }
    println!(
        "THROUGHPUT kube-rs websocket port-forward (echo, 32 MiB each way): median {:.1} MB/s of {rates:.1?}",
        median(rates.clone())
    );

    fx.finish().await
}

/// `kubectl port-forward` as a child process; returns it and its local port.
async fn start_kubectl_port_forward(
    kubeconfig: &str,
    pod: &str,
    remote: u16,
    websockets: bool,
) -> anyhow::Result<(Child, u16, tokio::task::JoinHandle<String>)> {
    let mut child = Command::new(kubectl())
        .args([
            "--kubeconfig",
            kubeconfig,
            "-n",
            NAMESPACE,
            "port-forward",
            "--address",
            "127.0.0.1",
        ])
        .arg(format!("pod/{pod}"))
        .arg(format!(":{remote}"))
        .env(
            "KUBECTL_PORT_FORWARD_WEBSOCKETS",
            if websockets { "true" } else { "false" },
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let stderr_task = tokio::spawn(async move {
        let mut all = String::new();
        while let Ok(Some(line)) = stderr.next_line().await {
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let local = tokio::time::timeout(WAIT, async {
        while let Some(line) = stdout.next_line().await? {
            // "Forwarding from 127.0.0.1:41234 -> 8080"
            if let Some(rest) = line.strip_prefix("Forwarding from 127.0.0.1:") {
                let port = rest.split_whitespace().next().unwrap_or_default();
                return Ok(port.parse::<u16>()?);
            }
        }
        bail!("kubectl port-forward exited before forwarding")
    })
    .await
    .context("waiting for kubectl port-forward to listen")??;
    tokio::spawn(async move { while let Ok(Some(_)) = stdout.next_line().await {} });
    Ok((child, local, stderr_task))
}

async fn kubectl_port_forward_case(fx: &Fixture, websockets: bool) -> anyhow::Result<()> {
    let (pod, _) = fx
        .pod(
            if websockets {
                "pf-kubectl-ws"
            } else {
                "pf-kubectl-spdy"
            },
            None,
        )
        .await?;
    let echo = echo_server().await?;
    let kc = fx.cluster.kubeconfig.display().to_string();
    let (mut child, local, _stderr) =
        start_kubectl_port_forward(&kc, &pod, echo, websockets).await?;

    // Small round trip, then half-close: our FIN reaches the echo pod, its FIN comes back.
    let conn = TcpStream::connect(("127.0.0.1", local)).await?;
    assert_eq!(echo_round_trip(conn, b"hi", false).await?, b"hi");
    let conn = TcpStream::connect(("127.0.0.1", local)).await?;
    assert_eq!(
        echo_round_trip(conn, b"half-closed", true).await?,
        b"half-closed",
        "echo then EOF"
    );

    // A pod that hangs up first, on its own port-forward: greeting, then EOF.
    let banner = banner_server().await?;
    let (mut banner_pf, banner_local, _e) =
        start_kubectl_port_forward(&kc, &pod, banner, websockets).await?;
    let conn = TcpStream::connect(("127.0.0.1", banner_local)).await?;
    assert_eq!(read_all(conn).await?, BANNER);
    banner_pf.kill().await?;

    // Concurrent connections with a few MB each (several SPDY stream pairs at once).
    let jobs = (0..4u64).map(|i| async move {
        let data = payload(3 * 1024 * 1024 + i as usize, 100 + i);
        let conn = TcpStream::connect(("127.0.0.1", local)).await?;
        let got = echo_round_trip(conn, &data, true).await?;
        anyhow::ensure!(got == data, "connection {i}: echo differs");
        Ok::<_, anyhow::Error>(())
    });
    futures::future::try_join_all(jobs).await?;

    // Throughput: median of 3 echo round trips of 32 MiB.
    let data = payload(32 * 1024 * 1024, 7);
    let mut rates = Vec::new();
    for _ in 0..3 {
        let conn = TcpStream::connect(("127.0.0.1", local)).await?;
        let start = Instant::now();
        let got = echo_round_trip(conn, &data, true).await?;
        rates.push(data.len() as f64 / 1e6 / start.elapsed().as_secs_f64());
        assert!(got == data);
    }
    println!(
        "THROUGHPUT kubectl port-forward ({}, echo, 32 MiB each way): median {:.1} MB/s of {rates:.1?}",
        if websockets {
            "websocket tunnel -> SPDY"
        } else {
            "SPDY"
        },
        median(rates.clone())
    );
    assert!(
        child.try_wait()?.is_none(),
        "kubectl port-forward still running"
    );
    child.kill().await?;

    // Whichever way kubectl came in, the apiserver handed us SPDY/3.1.
    let logs = captured_logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("port-forward connection opened")
                && l.contains(&format!("pod={NAMESPACE}/{pod}"))
                && l.contains("websocket=false")),
        "no SPDY port-forward seen for {pod}:\n{logs}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs the local cluster; e2e-tests/run-integration.sh runs it with --ignored"]
async fn kubectl_port_forward_websocket_tunnel() -> anyhow::Result<()> {
    let cluster = Cluster::connect("kubectl_port_forward_websocket_tunnel").await;
    let fx = Fixture::start(cluster).await?;
    kubectl_port_forward_case(&fx, true).await?;
    fx.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs the local cluster; e2e-tests/run-integration.sh runs it with --ignored"]
async fn kubectl_port_forward_plain_spdy() -> anyhow::Result<()> {
    let cluster = Cluster::connect("kubectl_port_forward_plain_spdy").await;
    let fx = Fixture::start(cluster).await?;
    kubectl_port_forward_case(&fx, false).await?;
    fx.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs the local cluster; e2e-tests/run-integration.sh runs it with --ignored"]
async fn kubectl_port_forward_to_a_closed_port_reports_the_error() -> anyhow::Result<()> {
    let cluster = Cluster::connect("kubectl_port_forward_to_a_closed_port_reports_the_error").await;
    let fx = Fixture::start(cluster).await?;
    let (pod, _) = fx.pod("pf-closed", None).await?;
    let closed = closed_port().await?;
    let kc = fx.cluster.kubeconfig.display().to_string();
    let (mut child, local, stderr) = start_kubectl_port_forward(&kc, &pod, closed, true).await?;
    let mut conn = TcpStream::connect(("127.0.0.1", local)).await?;
    // kubectl closes the local connection once the error stream delivered the message.
    let mut buf = Vec::new();
    // (A reset instead of an orderly close is fine too; the bounded wait is the check.)
    let _ = tokio::time::timeout(
        WAIT,
        tokio::io::AsyncReadExt::read_to_end(&mut conn, &mut buf),
    )
    .await
    .context("kubectl kept the local connection open after the forwarding error")?;
    assert!(buf.is_empty(), "no data from a port nothing listens on");
    // kubectl 1.32 gives up the whole port-forward after an error.
    let _ = tokio::time::timeout(Duration::from_secs(20), child.wait()).await;
    let _ = child.kill().await;
    let stderr = tokio::time::timeout(WAIT, stderr).await??;
    assert!(
        stderr.contains(&format!(
            "error forwarding port {closed} to pod {NAMESPACE}/{pod}"
        )),
        "kubectl stderr:\n{stderr}"
    );
    fx.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs the local cluster; e2e-tests/run-integration.sh runs it with --ignored"]
async fn healthz_and_unknown_paths_directly() -> anyhow::Result<()> {
    // The endpoints themselves, without the apiserver: checked with curl as an
    // independent client (TLS, self-signed certificate).
    let cluster = Cluster::connect("healthz_and_unknown_paths_directly").await;
    let fx = Fixture::start(cluster).await?;
    fx.pods.set_ip("known", support::LOOPBACK);
    let base = format!("https://127.0.0.1:{}", fx.kubelet_port);
    let cases = [
        ("/healthz", "200", "ok"),
        ("/nope", "404", "404 page not found"),
        (
            "/containerLogs/default/ghost/app",
            "404",
            "pod \"ghost\" does not exist",
        ),
        (
            "/containerLogs/default/known/other",
            "404",
            "container \"other\" not found in pod \"known\"",
        ),
        (
            "/containerLogs/default/ghost/app?tailLines=-1",
            "422",
            "Invalid request",
        ),
        ("/portForward/default/ghost", "404", "pod does not exist"),
    ];
    for (path, code, body) in cases {
        let out = Command::new("curl")
            .args(["-sk", "-w", "\n%{http_code}", &format!("{base}{path}")])
            .output()
            .await?;
        let text = String::from_utf8(out.stdout)?;
        let (got_body, got_code) = text.rsplit_once('\n').expect("code line");
        assert_eq!(got_code, code, "{path}: {text}");
        assert!(got_body.contains(body), "{path}: {got_body}");
    }
    fx.finish().await
}
