//! The `dask-kube` command line: argument definitions (clap derive) and one `run` per
//! subcommand, each a thin layer over the library.

use crate::adapt::AdaptPolicy;
use crate::cluster::{Access, KubeCluster, Progress, ProgressFn, close_cluster};
use crate::config::DaskConfig;
use crate::error::exit;
use crate::kube_ops::{self, ClusterApi};
use crate::manifests::{self, ADAPT_ANNOTATION, DASHBOARD_PORT, SUPERVISOR_ANNOTATION};
use crate::names;
use crate::portforward::PodPortConnect;
use crate::scaler::Scaler;
use crate::scaling::{WorkerCounts, WorkerPodState};
use crate::scheduler_api::HttpSchedulerApi;
use crate::supervisor::{self, StateDir, SupervisorState};
use crate::template::PodTemplate;
use crate::{Error, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use dask_worker_spec::labels;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tracing::{info, warn};

const EXIT_CODES: &str = "Exit codes: 0 ok; 1 runtime failure (API server, scheduler, timeout); \
2 usage or configuration error; 3 cluster or namespace not found; \
4 partial failure (some pods not created, retired or deleted).";

/// Dask clusters on Kubernetes from a worker pod template.
#[derive(Debug, Parser)]
#[command(name = "dask-kube", version, about, after_help = EXIT_CODES)]
pub struct Cli {
    /// Namespace (default: kubernetes.namespace, the service account's, the kubeconfig
    /// context's, or `default`).
    #[arg(long, short = 'n', global = true, env = "DASK_KUBE_NAMESPACE")]
    pub namespace: Option<String>,
    /// Output format.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// Log filter (tracing `EnvFilter` syntax).
    #[arg(
        long,
        global = true,
        env = "DASK_KUBE_LOG",
        default_value = "dask_kube=info"
    )]
    pub log: String,
    /// The subcommand.
    #[command(subcommand)]
    pub command: Command,
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Lines for people.
    Text,
    /// One JSON document, for scripts.
    Json,
}

/// `MIN:MAX` of an adaptive range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdaptRange {
    /// Fewest workers.
    pub min: u32,
    /// Most workers.
    pub max: u32,
}

impl FromStr for AdaptRange {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        let (a, b) = s
            .split_once(':')
            .ok_or_else(|| format!("{s:?} is not MIN:MAX"))?;
        let min: u32 = a
            .trim()
            .parse()
            .map_err(|_| format!("{a:?} is not a number"))?;
        let max: u32 = b
            .trim()
            .parse()
            .map_err(|_| format!("{b:?} is not a number"))?;
        if min > max {
            return Err(format!("minimum {min} is above maximum {max}"));
        }
        Ok(AdaptRange { min, max })
    }
}

impl std::fmt::Display for AdaptRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.min, self.max)
    }
}

/// Adapt tuning shared by `up --adapt`, `adapt` and `attach --adapt`.
#[derive(Debug, Clone, Args)]
pub struct AdaptTuning {
    /// Seconds between polls of the scheduler's target.
    #[arg(long, default_value_t = 1.0)]
    pub interval: f64,
    /// Polls in a row a lower target must hold before scaling down.
    #[arg(long, default_value_t = crate::adapt::DEFAULT_WAIT_COUNT)]
    pub wait_count: u32,
    /// Seconds after a change before scaling down (gives new worker pods time to start
    /// and connect before a lower target can remove them).
    #[arg(long, default_value_t = crate::adapt::DEFAULT_COOLDOWN.as_secs_f64())]
    pub cooldown: f64,
    /// Most workers removed per step.
    #[arg(long)]
    pub max_scale_down_step: Option<u32>,
}

impl AdaptTuning {
    fn policy(&self, range: AdaptRange) -> Result<AdaptPolicy> {
        let secs = |v: f64, what: &str| {
            Duration::try_from_secs_f64(v)
                .map_err(|_| Error::Usage(format!("--{what} must be a number of seconds >= 0")))
        };
        Ok(AdaptPolicy {
            interval: secs(self.interval, "interval")?.max(Duration::from_millis(100)),
            wait_count: self.wait_count.max(1),
            cooldown: secs(self.cooldown, "cooldown")?,
            max_scale_down_step: self.max_scale_down_step,
            ..AdaptPolicy::new(range.min, range.max)
        })
    }

    fn args(&self) -> Vec<String> {
        let mut args = vec![
            "--interval".into(),
            self.interval.to_string(),
            "--wait-count".into(),
            self.wait_count.to_string(),
            "--cooldown".into(),
            self.cooldown.to_string(),
        ];
        if let Some(step) = self.max_scale_down_step {
            args.extend(["--max-scale-down-step".into(), step.to_string()]);
        }
        args
    }
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a cluster, print its scheduler address and dashboard link, and keep it (and
    /// adapting) in the foreground; Ctrl-C / SIGTERM retires and deletes everything.
    Up(UpArgs),
    /// List clusters.
    List {
        /// In every namespace.
        #[arg(long, short = 'A')]
        all_namespaces: bool,
    },
    /// Scale a cluster to N workers (retiring workers through the scheduler before
    /// deleting them).
    Scale {
        /// Cluster name.
        name: String,
        /// Workers wanted.
        n: usize,
        /// Delete connected workers without retiring them (their data is lost).
        #[arg(long)]
        force: bool,
        /// Wait at most this many seconds for new workers to connect (0: do not wait).
        #[arg(long, default_value_t = 0)]
        wait: u64,
    },
    /// Adapt an existing cluster in the foreground until Ctrl-C.
    Adapt {
        /// Cluster name.
        name: String,
        /// Fewest workers.
        #[arg(long)]
        min: u32,
        /// Most workers.
        #[arg(long)]
        max: u32,
        /// Tuning.
        #[command(flatten)]
        tuning: AdaptTuning,
    },
    /// Print the logs of a cluster's scheduler and workers, or of one worker.
    Logs {
        /// Cluster name.
        name: String,
        /// A worker pod (or Dask worker) name.
        worker: Option<String>,
    },
    /// Delete a cluster (and stop its detached supervisor).
    Down {
        /// Cluster name.
        name: String,
    },
    /// Print the manifests `up` would create; needs no cluster.
    Render {
        /// Worker pod template.
        #[arg(long, short = 'f')]
        file: Option<PathBuf>,
        /// Name template.
        #[arg(long)]
        name: Option<String>,
        /// Scheduler pod template.
        #[arg(long)]
        scheduler_template: Option<PathBuf>,
    },
    /// Keep the local scheduler address (and optionally adapting) alive for an existing
    /// cluster; `up --detach` runs this in the background.
    Attach {
        /// Cluster name.
        name: String,
        /// Adapt between MIN:MAX workers.
        #[arg(long)]
        adapt: Option<AdaptRange>,
        /// Local port of the scheduler address (0 picks one).
        #[arg(long, default_value_t = 0)]
        local_port: u16,
        /// Tuning.
        #[command(flatten)]
        tuning: AdaptTuning,
        /// Run as the detached supervisor: own session, state file.
        #[arg(long, hide = true)]
        daemon: bool,
    },
    /// Measure the time from `up` to N connected workers, and the planning functions' cost.
    #[command(hide = true)]
    Bench {
        /// Worker pod template.
        #[arg(long, short = 'f')]
        file: PathBuf,
        /// Workers per run.
        #[arg(long, default_value_t = 3)]
        workers: usize,
        /// Runs.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Skip the cluster runs; only the planning functions.
        #[arg(long)]
        planning_only: bool,
    },
}

/// `up` arguments.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// Worker pod template (default: kubernetes.worker-template-path / worker-template).
    #[arg(long, short = 'f')]
    pub file: Option<PathBuf>,
    /// Start this many workers.
    #[arg(long, conflicts_with = "adapt")]
    pub workers: Option<usize>,
    /// Adapt between MIN:MAX workers.
    #[arg(long)]
    pub adapt: Option<AdaptRange>,
    /// Name template (default: kubernetes.name, `dask-{user}-{uuid}`).
    #[arg(long)]
    pub name: Option<String>,
    /// Scheduler pod template (default: derived from the worker template).
    #[arg(long)]
    pub scheduler_template: Option<PathBuf>,
    /// Extra `dask scheduler` option (repeatable), e.g. `--scheduler-option=--idle-timeout=3600`.
    #[arg(long = "scheduler-option", allow_hyphen_values = true)]
    pub scheduler_options: Vec<String>,
    /// Use a scheduler that already runs elsewhere instead of a scheduler pod.
    #[arg(long)]
    pub scheduler_address: Option<String>,
    /// The scheduler's adaptive target duration (`500ms`, `2s`; Dask's default 5s): how
    /// long the scheduler wants queued work to take, hence how many workers it asks for.
    /// Like `cluster.adapt(target_duration=...)`; default: `distributed.adaptive.target-duration`.
    #[arg(long)]
    pub target_duration: Option<String>,
    /// Leave the cluster running in the background and exit; `dask-kube down NAME` ends it.
    #[arg(long)]
    pub detach: bool,
    /// Local port of the scheduler address (0 picks one).
    #[arg(long, default_value_t = 0)]
    pub local_port: u16,
    /// Seconds to wait for the workers to connect.
    #[arg(long, default_value_t = 300)]
    pub wait_timeout: u64,
    /// Adapt tuning.
    #[command(flatten)]
    pub tuning: AdaptTuning,
}

/// Text or JSON output, and a progress bar on a terminal.
struct Ui {
    output: Output,
    bar: Option<ProgressBar>,
}

impl Ui {
    fn new(output: Output) -> Self {
        let bar = (output == Output::Text && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new_spinner();
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Ui { output, bar }
    }

    fn progress(&self) -> ProgressFn {
        let bar = self.bar.clone();
        let quiet = self.output == Output::Json;
        Arc::new(move |event| match (&bar, event) {
            (Some(bar), Progress::Step(s)) => bar.set_message(s),
            (Some(bar), Progress::Workers { connected, wanted }) => {
                if bar.length() != Some(wanted as u64) {
                    bar.set_length(wanted as u64);
                    if let Ok(style) = ProgressStyle::with_template(
                        "{spinner} workers {bar:30} {pos}/{len} {elapsed}",
                    ) {
                        bar.set_style(style);
                    }
                }
                bar.set_position(connected as u64);
            }
            (None, _) if quiet => {}
            (None, Progress::Step(s)) => eprintln!("{s}"),
            (None, Progress::Workers { connected, wanted }) => {
                eprintln!("workers connected: {connected}/{wanted}")
            }
        })
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }

    fn print(&self, text: &str, value: serde_json::Value) {
        self.finish();
        match self.output {
            Output::Text => println!("{text}"),
            Output::Json => println!("{value}"),
        }
    }
}

/// Runs the command; returns the exit code.
pub async fn run(cli: Cli) -> i32 {
    let Cli {
        namespace,
        output,
        log: _,
        command,
    } = cli;
    let ui = Ui::new(output);
    let result = match command {
        Command::Up(args) => up(args, namespace, &ui).await,
        Command::List { all_namespaces } => list(namespace, all_namespaces, &ui).await,
        Command::Scale {
            name,
            n,
            force,
            wait,
        } => scale(&name, n, force, wait, namespace, &ui).await,
        Command::Adapt {
            name,
            min,
            max,
            tuning,
        } => adapt(&name, AdaptRange { min, max }, &tuning, namespace).await,
        Command::Logs { name, worker } => logs(&name, worker.as_deref(), namespace).await,
        Command::Down { name } => down(&name, namespace, &ui).await,
        Command::Render {
            file,
            name,
            scheduler_template,
        } => render(file, name, scheduler_template, namespace, &ui),
        Command::Attach {
            name,
            adapt,
            local_port,
            tuning,
            daemon,
        } => attach(&name, adapt, local_port, &tuning, daemon, namespace).await,
        Command::Bench {
            file,
            workers,
            runs,
            planning_only,
        } => bench(file, workers, runs, planning_only, namespace).await,
    };
    ui.finish();
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    }
}

/// Waits for SIGINT or SIGTERM.
async fn shutdown_signal() -> Result<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())
        .map_err(|e| Error::io("installing the SIGTERM handler", e))?;
    let mut int = signal(SignalKind::interrupt())
        .map_err(|e| Error::io("installing the SIGINT handler", e))?;
    let mut hup =
        signal(SignalKind::hangup()).map_err(|e| Error::io("installing the SIGHUP handler", e))?;
    tokio::select! {
        _ = term.recv() => Ok("SIGTERM"),
        _ = int.recv() => Ok("SIGINT"),
        _ = hup.recv() => Ok("SIGHUP"),
    }
}

async fn up(args: UpArgs, namespace: Option<String>, ui: &Ui) -> Result<i32> {
    let UpArgs {
        file,
        workers,
        adapt,
        name,
        scheduler_template,
        scheduler_options,
        scheduler_address,
        target_duration,
        detach,
        local_port,
        wait_timeout,
        tuning,
    } = args;
    if detach && scheduler_address.is_some() {
        return Err(Error::Usage(
            "--detach needs a scheduler pod; it cannot be used with --scheduler-address".into(),
        ));
    }
    let policy = adapt.map(|r| tuning.policy(r)).transpose()?;
    let mut builder = KubeCluster::builder()
        .on_progress(ui.progress())
        .local_port(local_port);
    if let Some(file) = file {
        builder = builder.worker_template(PodTemplate::from_file(file, "worker")?);
    }
    if let Some(path) = scheduler_template {
        builder = builder.scheduler_template(PodTemplate::from_file(path, "scheduler")?);
    }
    if let Some(ns) = &namespace {
        builder = builder.namespace(ns);
    }
    if let Some(name) = name {
        builder = builder.name_template(name);
    }
    if let Some(address) = scheduler_address {
        builder = builder.scheduler_address(address);
    }
    builder = builder.scheduler_options(scheduler_options);
    if let Some(duration) = target_duration {
        builder = builder.adaptive_target_duration(duration);
    }
    // Name and namespace are settled first, so an interrupted start knows what to delete.
    let (client, default_ns, url) = kube_ops::connect().await?;
    let spec = builder.spec(Some(&default_ns))?;
    let api = ClusterApi::new(client.clone(), spec.namespace.clone(), url.clone());
    builder = builder
        .client(client, default_ns, url)
        .name(spec.name.clone())
        .namespace(spec.namespace.clone());
    // Install the handlers before anything exists, so an early Ctrl-C still cleans up.
    let signal = shutdown_signal();
    tokio::pin!(signal);
    let started = Instant::now();
    let mut cluster = tokio::select! {
        c = builder.start() => c?,
        s = &mut signal => {
            let s = s?;
            eprintln!("interrupted ({s}) while starting cluster {}; deleting what was created", spec.name);
            let leftovers = delete_partial_cluster(&api, &spec.name).await;
            if !leftovers.is_empty() {
                return Err(Error::Partial { action: format!("delete cluster {}", spec.name), done: 0, wanted: leftovers.len(), failures: leftovers });
            }
            return Ok(exit::FAILURE);
        }
    };
    let wanted = match (&policy, workers) {
        (Some(p), _) => p.minimum as usize,
        (None, Some(n)) => n,
        (None, None) => 0,
    };
    let prepared = async {
        if let Some(n) = workers {
            cluster.scale(n).await?;
        }
        if let Some(p) = &policy
            && !detach
        {
            cluster.adapt_with(p.clone())?;
        } else if let Some(p) = &policy {
            cluster.scale(p.minimum as usize).await?;
        }
        if wanted > 0 {
            cluster
                .wait_for_workers(wanted, Duration::from_secs(wait_timeout))
                .await?;
        }
        Ok::<(), Error>(())
    };
    let outcome = tokio::select! {
        r = prepared => r.map(|()| None),
        s = &mut signal => Ok(Some(s?)),
    };
    let interrupted = match outcome {
        Ok(s) => s,
        Err(e) => {
            // Nothing half-made is left: the failure is reported after deleting the cluster.
            warn!(error = %e, "up failed; deleting the cluster");
            let close = cluster.close().await;
            return Err(match close {
                Ok(_) => e,
                Err(Error::Partial { failures, .. }) => Error::CleanupIncomplete {
                    cause: Box::new(e),
                    leftovers: failures,
                },
                Err(other) => Error::CleanupIncomplete {
                    cause: Box::new(e),
                    leftovers: vec![other.to_string()],
                },
            });
        }
    };
    if let Some(s) = interrupted {
        info!(signal = s, "interrupted; deleting the cluster");
        cluster.close().await?;
        return Ok(exit::OK);
    }
    let ready_seconds = started.elapsed().as_secs_f64();
    let name = cluster.name().to_owned();
    let ns = cluster.namespace().to_owned();
    if detach {
        let port = cluster.local_address().map_or(local_port, |a| a.port());
        let dashboard = cluster.dashboard_link().to_owned();
        cluster.detach().await?;
        let dir = StateDir::from_env();
        let exe = std::env::current_exe()
            .map_err(|e| Error::io("locating the dask-kube executable", e))?;
        let mut attach_args = vec![
            "--namespace".to_owned(),
            ns.clone(),
            "attach".into(),
            name.clone(),
            "--daemon".into(),
            "--local-port".into(),
            port.to_string(),
        ];
        if let Some(range) = adapt {
            attach_args.extend(["--adapt".into(), range.to_string()]);
            attach_args.extend(tuning.args());
        }
        let log = dir.log_file(&ns, &name);
        let mut child = supervisor::spawn(&exe, &attach_args, &log)?;
        let state = supervisor::wait_ready(&dir, &ns, &name, &mut child).await?;
        ui.print(
            &format!(
                "cluster {name} in namespace {ns} (detached, supervisor pid {})\nscheduler address: {}\ndashboard: {dashboard}\nstop it with: dask-kube down {name} -n {ns}",
                state.pid, state.address
            ),
            json!({"name": name, "namespace": ns, "scheduler_address": state.address, "dashboard": dashboard,
                   "supervisor_pid": state.pid, "log": state.log, "ready_seconds": ready_seconds}),
        );
        return Ok(exit::OK);
    }
    ui.print(
        &format!(
            "cluster {name} in namespace {ns}\nscheduler address: {}\ndashboard: {}\nready in {ready_seconds:.1}s; Ctrl-C retires and deletes the cluster",
            cluster.scheduler_address(),
            cluster.dashboard_link()
        ),
        json!({"name": name, "namespace": ns, "scheduler_address": cluster.scheduler_address(),
               "dashboard": cluster.dashboard_link(), "ready_seconds": ready_seconds}),
    );
    let s = (&mut signal).await?;
    info!(signal = s, cluster = %name, "shutting down");
    let report = cluster.close().await?;
    eprintln!(
        "deleted cluster {name}: {} pods, {} workers retired first",
        report.deleted_pods, report.retired
    );
    Ok(exit::OK)
}

/// Deletes whatever exists of a cluster whose start was interrupted; returns what is left.
async fn delete_partial_cluster(api: &ClusterApi, name: &str) -> Vec<String> {
    let mut names: Vec<String> = api
        .list_pods(&manifests::selector(name, labels::WORKER))
        .await
        .map(|pods| pods.into_iter().filter_map(|p| p.metadata.name).collect())
        .unwrap_or_default();
    names.push(name.to_owned());
    let mut leftovers = api.delete_pods(&names, Some(0)).await.failed;
    if let Err(e) = api.delete_service(name).await {
        leftovers.push(format!("service/{name}: {e}"));
    }
    leftovers
}

fn namespace_or_default(namespace: Option<String>) -> Result<Option<String>> {
    if namespace.is_some() {
        return Ok(namespace);
    }
    Ok(DaskConfig::load()?.kube_settings()?.namespace)
}

async fn api_for(namespace: Option<String>) -> Result<ClusterApi> {
    let (client, default_ns, url) = kube_ops::connect().await?;
    let ns = namespace_or_default(namespace)?.unwrap_or(default_ns);
    Ok(ClusterApi::new(client, ns, url))
}

async fn list(namespace: Option<String>, all: bool, ui: &Ui) -> Result<i32> {
    let api = api_for(namespace).await?;
    let scheduler_selector = format!(
        "{}={},{}",
        manifests::APP_LABEL.0,
        manifests::APP_LABEL.1,
        format_args!("{}={}", labels::COMPONENT, labels::SCHEDULER)
    );
    let worker_selector = format!(
        "{}={},{}={}",
        manifests::APP_LABEL.0,
        manifests::APP_LABEL.1,
        labels::COMPONENT,
        labels::WORKER
    );
    let (schedulers, workers) = if all {
        (
            api.list_pods_all_namespaces(&scheduler_selector).await?,
            api.list_pods_all_namespaces(&worker_selector).await?,
        )
    } else {
        (
            api.list_pods(&scheduler_selector).await?,
            api.list_pods(&worker_selector).await?,
        )
    };
    let mut by_cluster: BTreeMap<(String, String), Vec<WorkerPodState>> = BTreeMap::new();
    for pod in &workers {
        let cluster = pod
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(labels::CLUSTER_NAME))
            .cloned()
            .unwrap_or_default();
        by_cluster
            .entry((pod.metadata.namespace.clone().unwrap_or_default(), cluster))
            .or_default()
            .push(WorkerPodState::from_pod(pod));
    }
    let now = k8s_openapi::jiff::Timestamp::now().as_second();
    let mut rows = Vec::new();
    for pod in &schedulers {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let counts = WorkerCounts::of(
            by_cluster
                .get(&(ns.clone(), name.clone()))
                .map(Vec::as_slice)
                .unwrap_or_default(),
        );
        let annotations = pod.metadata.annotations.clone().unwrap_or_default();
        let age = now
            - pod
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.as_second())
                .unwrap_or(now);
        rows.push(json!({
            "namespace": ns, "name": name,
            "status": pod.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_else(|| "Unknown".into()),
            "workers": counts, "age_seconds": age,
            "supervisor": annotations.get(SUPERVISOR_ANNOTATION), "adapt": annotations.get(ADAPT_ANNOTATION),
        }));
    }
    let mut text = format!(
        "{:<16} {:<40} {:<10} {:<22} {:>8}  {}",
        "NAMESPACE", "NAME", "STATUS", "WORKERS(run/pend/end)", "AGE", "SUPERVISOR"
    );
    for r in &rows {
        let w = &r["workers"];
        text.push_str(&format!(
            "\n{:<16} {:<40} {:<10} {:<22} {:>8}  {}",
            r["namespace"].as_str().unwrap_or_default(),
            r["name"].as_str().unwrap_or_default(),
            r["status"].as_str().unwrap_or_default(),
            format!("{}/{}/{}", w["running"], w["pending"], w["finished"]),
            human_age(r["age_seconds"].as_i64().unwrap_or_default()),
            match (r["supervisor"].as_str(), r["adapt"].as_str()) {
                (Some(s), Some(a)) => format!("{s} adapt {a}"),
                (Some(s), None) => s.to_owned(),
                _ => "-".to_owned(),
            }
        ));
    }
    if rows.is_empty() {
        text = format!(
            "no Dask clusters in {}",
            if all {
                "any namespace".to_owned()
            } else {
                format!("namespace {}", api.namespace())
            }
        );
    }
    ui.print(&text, json!(rows));
    Ok(exit::OK)
}

fn human_age(seconds: i64) -> String {
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

async fn scale(
    name: &str,
    n: usize,
    force: bool,
    wait: u64,
    namespace: Option<String>,
    ui: &Ui,
) -> Result<i32> {
    let cluster = KubeCluster::connect(name, namespace.as_deref(), Access::Auto, 0, None).await?;
    let result = cluster.scale_with(n, force).await;
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            cluster.detach().await?;
            return Err(e);
        }
    };
    if wait > 0 && n > report.before {
        cluster
            .wait_for_workers(n, Duration::from_secs(wait))
            .await?;
    }
    cluster.detach().await?;
    ui.print(
        &format!(
            "{name}: {} -> {} workers (created {}, retired {}, deleted {})",
            report.before,
            report.target,
            report.created.len(),
            report.retired.len(),
            report.deleted.len()
        ),
        serde_json::to_value(&report).unwrap_or_default(),
    );
    Ok(exit::OK)
}

async fn adapt(
    name: &str,
    range: AdaptRange,
    tuning: &AdaptTuning,
    namespace: Option<String>,
) -> Result<i32> {
    let policy = tuning.policy(range)?;
    let mut cluster =
        KubeCluster::connect(name, namespace.as_deref(), Access::Auto, 0, None).await?;
    if let Ok(Some(pod)) = cluster.api().get_pod(name).await
        && let Some(other) = pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ADAPT_ANNOTATION))
    {
        warn!(%other, "a detached supervisor also adapts this cluster; the two controllers will fight");
    }
    cluster.adapt_with(policy)?;
    eprintln!("adapting {name} between {range} workers; Ctrl-C stops adapting (the cluster stays)");
    let s = shutdown_signal().await?;
    info!(signal = s, "stopping");
    cluster.detach().await?;
    Ok(exit::OK)
}

async fn logs(name: &str, worker: Option<&str>, namespace: Option<String>) -> Result<i32> {
    names::validate_cluster_name(name)?;
    let api = api_for(namespace).await?;
    let scheduler = api.get_pod(name).await?;
    let workers: Vec<String> = api
        .list_pods(&manifests::selector(name, labels::WORKER))
        .await?
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    if scheduler.is_none() && workers.is_empty() {
        return Err(Error::ClusterNotFound {
            name: name.to_owned(),
            namespace: api.namespace().to_owned(),
        });
    }
    let pods: Vec<String> = match worker {
        Some(w) => {
            let pod =
                names::pod_of_worker(w, workers.iter().map(String::as_str)).ok_or_else(|| {
                    Error::Usage(format!(
                        "no worker {w:?} in cluster {name}; workers: {}",
                        workers.join(", ")
                    ))
                })?;
            vec![pod.to_owned()]
        }
        None => scheduler
            .iter()
            .map(|_| name.to_owned())
            .chain(workers)
            .collect(),
    };
    let single = pods.len() == 1;
    for pod in pods {
        let text = api.logs(&pod, None).await?;
        if !single {
            println!("==> pod/{pod} <==");
        }
        print!("{text}");
        if !single && !text.ends_with('\n') {
            println!();
        }
    }
    Ok(exit::OK)
}

async fn down(name: &str, namespace: Option<String>, ui: &Ui) -> Result<i32> {
    names::validate_cluster_name(name)?;
    let api = api_for(namespace).await?;
    let ns = api.namespace().to_owned();
    let stopped = supervisor::stop(&StateDir::from_env(), &ns, name).await?;
    let scheduler = api.get_pod(name).await?;
    let workers = api
        .list_pods(&manifests::selector(name, labels::WORKER))
        .await?;
    if scheduler.is_none() && workers.is_empty() {
        return Err(Error::ClusterNotFound {
            name: name.to_owned(),
            namespace: ns,
        });
    }
    let worker_pod = scheduler
        .as_ref()
        .and_then(|p| p.metadata.annotations.as_ref())
        .and_then(|a| a.get(manifests::WORKER_TEMPLATE_ANNOTATION))
        .and_then(|t| serde_json::from_str(t).ok())
        .unwrap_or_default();
    // The scheduler may be broken: its API is tried (bounded) but not required.
    let scheduler_api =
        HttpSchedulerApi::new(PodPortConnect::new(api.pods(), name, DASHBOARD_PORT));
    let scaler = Scaler::new(api, Arc::new(scheduler_api), name, worker_pod, None);
    let report = close_cluster(&scaler, name, scheduler.is_some()).await;
    let text = format!(
        "deleted cluster {name} in namespace {ns}: {} pods{}{}",
        report.deleted_pods,
        if stopped { ", supervisor stopped" } else { "" },
        if report.leftovers.is_empty() {
            String::new()
        } else {
            format!("; left: {}", report.leftovers.join(", "))
        }
    );
    ui.print(
        &text,
        json!({"name": name, "namespace": ns, "supervisor_stopped": stopped, "report": report}),
    );
    Ok(if report.leftovers.is_empty() {
        exit::OK
    } else {
        exit::PARTIAL
    })
}

fn render(
    file: Option<PathBuf>,
    name: Option<String>,
    scheduler_template: Option<PathBuf>,
    namespace: Option<String>,
    ui: &Ui,
) -> Result<i32> {
    let mut builder = KubeCluster::builder();
    if let Some(file) = file {
        builder = builder.worker_template(PodTemplate::from_file(file, "worker")?);
    }
    if let Some(path) = scheduler_template {
        builder = builder.scheduler_template(PodTemplate::from_file(path, "scheduler")?);
    }
    if let Some(ns) = namespace {
        builder = builder.namespace(ns);
    }
    if let Some(name) = name {
        builder = builder.name_template(name);
    }
    let spec = builder.spec(Some(&kube_ops::offline_default_namespace()))?;
    let objects = spec.render()?;
    let mut text = String::new();
    for object in &objects {
        text.push_str("---\n");
        text.push_str(&serde_norway::to_string(object).map_err(|e| Error::Usage(e.to_string()))?);
    }
    ui.print(
        text.trim_end(),
        json!({"apiVersion": "v1", "kind": "List", "items": objects}),
    );
    Ok(exit::OK)
}

async fn attach(
    name: &str,
    adapt: Option<AdaptRange>,
    local_port: u16,
    tuning: &AdaptTuning,
    daemon: bool,
    namespace: Option<String>,
) -> Result<i32> {
    if daemon {
        // Own session: the terminal's Ctrl-C and hangup do not reach the supervisor.
        let _ = nix::unistd::setsid();
    }
    let policy = adapt.map(|r| tuning.policy(r)).transpose()?;
    let mut cluster = KubeCluster::connect(
        name,
        namespace.as_deref(),
        Access::PortForward,
        local_port,
        None,
    )
    .await?;
    let ns = cluster.namespace().to_owned();
    let pid = std::process::id();
    let host = supervisor::hostname();
    let dir = StateDir::from_env();
    if let Some(p) = policy {
        cluster.adapt_with(p)?;
    }
    let mut annotations =
        BTreeMap::from([(SUPERVISOR_ANNOTATION.to_owned(), format!("{host}:{pid}"))]);
    if let Some(range) = adapt {
        annotations.insert(ADAPT_ANNOTATION.to_owned(), range.to_string());
    }
    if let Err(e) = cluster
        .api()
        .apply_supervisor_annotations(name, &annotations)
        .await
    {
        warn!(error = %e, "cannot record the supervisor on the scheduler pod");
    }
    let state = SupervisorState {
        name: name.to_owned(),
        namespace: ns.clone(),
        pid,
        host,
        address: cluster.scheduler_address().to_owned(),
        dashboard: cluster.dashboard_link().to_owned(),
        adapt: adapt.map(|r| (r.min, r.max)),
        log: dir.log_file(&ns, name),
    };
    if daemon {
        dir.write(&state)?;
    }
    info!(cluster = %name, address = %state.address, "attached");
    if !daemon {
        println!(
            "scheduler address: {}\ndashboard: {}",
            state.address, state.dashboard
        );
    }
    // Until a signal, or the scheduler pod is gone (nothing left to keep alive).
    let gone = async {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            if let Ok(None) = cluster.api().get_pod(name).await {
                return;
            }
        }
    };
    tokio::select! {
        s = shutdown_signal() => info!(signal = s?, "supervisor stopping"),
        () = gone => info!(cluster = %name, "scheduler pod gone; supervisor exits"),
    }
    if let Err(e) = cluster
        .api()
        .apply_supervisor_annotations(name, &BTreeMap::new())
        .await
    {
        warn!(error = %e, "cannot clear the supervisor annotations");
    }
    if daemon {
        dir.remove(&ns, name, pid);
    }
    cluster.detach().await?;
    Ok(exit::OK)
}

async fn bench(
    file: PathBuf,
    workers: usize,
    runs: usize,
    planning_only: bool,
    namespace: Option<String>,
) -> Result<i32> {
    let planning = crate::bench::planning_costs();
    for line in &planning {
        println!("{line}");
    }
    if planning_only {
        return Ok(exit::OK);
    }
    let template = PodTemplate::from_file(&file, "worker")?;
    let mut times = Vec::new();
    for run in 1..=runs {
        let started = Instant::now();
        let mut builder = KubeCluster::builder()
            .worker_template(template.clone())
            .name_template("bench-{uuid}");
        if let Some(ns) = &namespace {
            builder = builder.namespace(ns);
        }
        let cluster = builder.start().await?;
        let scheduler_ready = started.elapsed().as_secs_f64();
        cluster.scale(workers).await?;
        cluster
            .wait_for_workers(workers, Duration::from_secs(300))
            .await?;
        let total = started.elapsed().as_secs_f64();
        let closing = Instant::now();
        cluster.close().await?;
        println!(
            "run {run}: scheduler ready {scheduler_ready:.2}s, {workers} workers connected {total:.2}s after up, close {:.2}s",
            closing.elapsed().as_secs_f64()
        );
        times.push(total);
    }
    times.sort_by(f64::total_cmp);
    if let Some(median) = times.get(times.len() / 2) {
        println!(
            "median time from up to {workers} connected workers over {runs} runs: {median:.2}s"
        );
    }
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use rstest::rstest;

    #[test]
    fn cli_definition_is_valid() {
        Cli::command().debug_assert();
    }

    #[test]
    fn help_documents_exit_codes() {
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("4 partial failure"), "{help}");
    }

    #[rstest]
    #[case::range("1:4", Ok(AdaptRange { min: 1, max: 4 }))]
    #[case::zero_min("0:10", Ok(AdaptRange { min: 0, max: 10 }))]
    #[case::inverted("5:1", Err("minimum 5 is above maximum 1".to_owned()))]
    #[case::no_colon("4", Err("\"4\" is not MIN:MAX".to_owned()))]
    #[case::not_a_number("a:4", Err("\"a\" is not a number".to_owned()))]
    fn parses_adapt_ranges(
        #[case] text: &str,
        #[case] expected: std::result::Result<AdaptRange, String>,
    ) {
        assert_eq!(text.parse::<AdaptRange>(), expected);
    }

    #[rstest]
    #[case::workers_and_adapt_conflict(&["dask-kube", "up", "--workers", "3", "--adapt", "1:4"])]
    #[case::scale_needs_a_count(&["dask-kube", "scale", "c"])]
    #[case::bad_output(&["dask-kube", "-o", "xml", "list"])]
    fn usage_errors_are_clap_errors(#[case] argv: &[&str]) {
        let err = Cli::try_parse_from(argv).unwrap_err();
        assert_eq!(err.exit_code(), exit::USAGE);
    }

    #[test]
    fn up_parses_all_flags() {
        let cli = Cli::try_parse_from([
            "dask-kube",
            "-n",
            "team",
            "up",
            "-f",
            "w.yml",
            "--adapt",
            "1:4",
            "--name",
            "x-{uuid}",
            "--detach",
            "--scheduler-option=--idle-timeout=60",
        ])
        .unwrap();
        let Command::Up(up) = cli.command else {
            panic!("not up")
        };
        assert_eq!(cli.namespace.as_deref(), Some("team"));
        assert_eq!(up.adapt, Some(AdaptRange { min: 1, max: 4 }));
        assert_eq!(up.scheduler_options, vec!["--idle-timeout=60"]);
        assert!(up.detach);
    }

    #[test]
    fn tuning_round_trips_through_attach_args() {
        let tuning = AdaptTuning {
            interval: 0.5,
            wait_count: 5,
            cooldown: 10.0,
            max_scale_down_step: Some(2),
        };
        let mut argv = vec!["dask-kube".to_owned(), "attach".into(), "c".into()];
        argv.extend(tuning.args());
        let cli = Cli::try_parse_from(argv).unwrap();
        let Command::Attach { tuning: parsed, .. } = cli.command else {
            panic!("not attach")
        };
        let policy = parsed.policy(AdaptRange { min: 1, max: 3 }).unwrap();
        assert_eq!(policy.interval, Duration::from_millis(500));
        assert_eq!(policy.wait_count, 5);
        assert_eq!(policy.cooldown, Duration::from_secs(10));
        assert_eq!(policy.max_scale_down_step, Some(2));
    }
}
