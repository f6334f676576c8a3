//! The `dask-kube` command line: argument definitions (clap derive) and one `run` per
//! subcommand, each a thin layer over the library.

use crate::adapt::{
    AdaptPolicy, AdaptTuning, DEFAULT_COOLDOWN, DEFAULT_INTERVAL, DEFAULT_WAIT_COUNT,
};
use crate::apiserver::{
    ClusterApi, CreateLimits, Credentials, KubeConnection, offline_default_namespace,
};
use crate::cluster::{
    AdaptPlacement, AttachOptions, DEFAULT_WAIT_TIMEOUT, DetachOptions, KubeCluster, Progress,
    ProgressFn, Reconnect, UpOptions, UpOutcome, UpReport, cluster_logs, delete_cluster,
    run_controller, supervise,
};
use crate::config::DaskConfig;
use crate::error::exit;
use crate::listing::{ClusterRow, list_clusters};
use crate::manifests::ADAPT_ANNOTATION;
use crate::names;
use crate::operator::{
    OperatorOptions, OperatorScope, SchedulerAccess, operator_crds_yaml, run_operator,
};
use crate::request::{AdaptRequest, ClusterRequest, TemplateSource};
use crate::scaler::CountCap;
use crate::signals;
use crate::supervisor::StateDir;
use crate::template::PodTemplate;
use crate::tls::{ClientTlsFiles, TlsMode};
use crate::{Error, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use dask_worker_spec::DefaultAffinity;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
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
    /// The kubeconfig file (default: the in-cluster service account, then $KUBECONFIG or
    /// ~/.kube/config).
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context (default: its current context).
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// Output format.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// Most pod creations/deletions in flight (flow control stays below it, backing off on
    /// the API server's 429s, errors and latency); default: kubernetes.max-in-flight, else 128.
    #[arg(long, global = true, env = "DASK_KUBE_MAX_IN_FLIGHT")]
    pub max_in_flight: Option<usize>,
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

/// Adapt tuning shared by `up --adapt`, `adapt`, `attach --adapt` and `controller`.
#[derive(Debug, Clone, Args)]
pub struct AdaptFlags {
    /// Seconds between polls of the scheduler's target.
    #[arg(long, default_value_t = DEFAULT_INTERVAL.as_secs_f64())]
    pub interval: f64,
    /// Polls in a row a lower target must hold before scaling down.
    #[arg(long, default_value_t = DEFAULT_WAIT_COUNT)]
    pub wait_count: u32,
    /// Seconds after a change before scaling down (gives new worker pods time to start
    /// and connect before a lower target can remove them).
    #[arg(long, default_value_t = DEFAULT_COOLDOWN.as_secs_f64())]
    pub cooldown: f64,
    /// Most workers removed per step.
    #[arg(long)]
    pub max_scale_down_step: Option<u32>,
    /// Replacements of ended workers that may start at once (or half the connected workers
    /// when more); the rest wait, their ended pods kept until replaced. Growth is not held.
    #[arg(long, default_value_t = crate::DEFAULT_START_WINDOW, value_parser = parse_start_window)]
    pub start_window: usize,
}

impl AdaptFlags {
    /// The library's tuning (which settles seconds into a policy, once).
    pub fn tuning(&self) -> AdaptTuning {
        AdaptTuning {
            interval: Some(self.interval),
            wait_count: Some(self.wait_count),
            cooldown: Some(self.cooldown),
            max_scale_down_step: self.max_scale_down_step,
            start_window: Some(self.start_window),
        }
    }

    fn policy(&self, range: AdaptRange) -> Result<AdaptPolicy> {
        AdaptPolicy::from_tuning(range.min, range.max, &self.tuning())
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
    /// Adapt an existing cluster: by its controller pod, which keeps adapting with no
    /// client (a new range replaces the old; `--off` stops it), or with `--foreground`
    /// from this process until Ctrl-C.
    Adapt {
        /// Cluster name.
        name: String,
        /// Fewest workers.
        #[arg(long, required_unless_present = "off")]
        min: Option<u32>,
        /// Most workers.
        #[arg(long, required_unless_present = "off")]
        max: Option<u32>,
        /// Stop adapting in the cluster (the controller pod is deleted; the workers stay).
        #[arg(long, conflicts_with_all = ["min", "max", "foreground"])]
        off: bool,
        /// Adapt from this process until Ctrl-C instead of the cluster's controller pod.
        #[arg(long)]
        foreground: bool,
        /// Tuning.
        #[command(flatten)]
        tuning: AdaptFlags,
    },
    /// Run as a cluster's controller pod (`up` creates it): adapt (with `--adapt`) until
    /// the scheduler ends, then delete the cluster. Runs inside the cluster.
    Controller {
        /// Cluster name.
        name: String,
        /// Adapt between MIN:MAX workers.
        #[arg(long)]
        adapt: Option<AdaptRange>,
        /// Tuning.
        #[command(flatten)]
        tuning: AdaptFlags,
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
    /// Write the client's copy of a cluster's TLS certificates (from its Secret) and print
    /// how a `distributed.Client` uses them: for a cluster started elsewhere, or again.
    Tls {
        /// Cluster name.
        name: String,
        /// Write the files here (default: dask-kube's state directory).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Print the manifests `up` would create; needs no cluster.
    Render {
        /// What the cluster is made of.
        #[command(flatten)]
        cluster: ClusterFlags,
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
        /// Local port of the dashboard (0 picks one).
        #[arg(long, default_value_t = 0)]
        dashboard_port: u16,
        /// Tuning.
        #[command(flatten)]
        tuning: AdaptFlags,
        /// Run as the detached supervisor: own session, state file.
        #[arg(long, hide = true)]
        daemon: bool,
    },
    /// The operator for dask-kubernetes' resources (DaskCluster, DaskWorkerGroup,
    /// DaskAutoscaler, DaskJob): `crds` prints their CustomResourceDefinitions, `run` runs
    /// it (in every namespace, or only in `--namespace`).
    Operator {
        /// What to do.
        #[command(subcommand)]
        action: OperatorAction,
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

/// `dask-kube operator` verbs.
#[derive(Debug, Subcommand)]
pub enum OperatorAction {
    /// Print the CustomResourceDefinitions to apply: `dask-kube operator crds | kubectl
    /// apply -f -`.
    Crds,
    /// Run the operator until SIGTERM / Ctrl-C: every namespace (the ClusterRole of
    /// deploy/operator/rbac-cluster.yaml), or only the global `--namespace` (the Role of
    /// deploy/operator/rbac-namespace.yaml). Logs `dask-kube-operator ready` once every
    /// watch has listed.
    Run {
        /// How to reach schedulers' HTTP API: `service` (cluster DNS, from a pod) or
        /// `port-forward` (from outside the cluster). Default: `service` in a pod, else
        /// `port-forward`.
        #[arg(long, value_enum)]
        scheduler_access: Option<SchedulerAccess>,
        /// Name in the events' `reportingController`.
        #[arg(long, default_value = "dask-kube-operator")]
        reporter: String,
        /// Pods that replace ended workers start only while fewer than this many workers of
        /// the group are starting (or half the connected ones, when more); the others are
        /// created holding the scheduling gate `k8s.dask.org/start-window` until there is
        /// room, so workers that cannot connect are not replaced all at once by pods that
        /// fail the same way. A scale-up is not held.
        #[arg(long, default_value_t = crate::DEFAULT_START_WINDOW, value_parser = parse_start_window)]
        start_window: usize,
    },
}

/// What a cluster is made of: the flags `up` and `render` share, mapped to a
/// [`ClusterRequest`] and nothing more ([`ClusterFlags::request`]); the library settles the
/// rest from the Dask config.
#[derive(Debug, Clone, Args)]
pub struct ClusterFlags {
    /// Worker pod template; `$VAR`/`${VAR}` are expanded from the environment (default:
    /// kubernetes.worker-template-path / worker-template, else --image / kubernetes.image).
    #[arg(long, short = 'f', conflicts_with = "image")]
    pub file: Option<PathBuf>,
    /// A worker pod running this image (`dask worker`) instead of a template.
    #[arg(long)]
    pub image: Option<String>,
    /// Environment variable of the scheduler and the workers (repeatable), over
    /// kubernetes.env.
    #[arg(long = "env", value_name = "NAME=VALUE", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// Name template (default: kubernetes.name, `dask-{user}-{uuid}`).
    #[arg(long)]
    pub name: Option<String>,
    /// Scheduler pod template (default: kubernetes.scheduler-template, else derived from
    /// the worker template).
    #[arg(long)]
    pub scheduler_template: Option<PathBuf>,
    /// Extra `dask scheduler` option (repeatable), e.g. `--scheduler-option=--idle-timeout=3600`.
    #[arg(long = "scheduler-option", allow_hyphen_values = true)]
    pub scheduler_options: Vec<String>,
    /// Use a scheduler that already runs elsewhere instead of a scheduler pod.
    #[arg(long)]
    pub scheduler_address: Option<String>,
    /// That scheduler's HTTP server (dashboard and `/api/v1`) as `host:port`, when it is
    /// not on the scheduler's host at port 8787.
    #[arg(long, requires = "scheduler_address")]
    pub scheduler_api_address: Option<String>,
    /// The scheduler's adaptive target duration (`500ms`, `2s`; Dask's default 5s): how
    /// long the scheduler wants queued work to take, hence how many workers it asks for.
    /// Like `cluster.adapt(target_duration=...)`; default: `distributed.adaptive.target-duration`.
    #[arg(long)]
    pub target_duration: Option<String>,
    /// The scheduler's `--idle-timeout` (`30m`, `3600s`; default `kubernetes.idle-timeout`,
    /// else none): after that long with no client and no work the scheduler ends, and the
    /// cluster's controller pod deletes the cluster.
    #[arg(long)]
    pub idle_timeout: Option<String>,
    /// The Service's type: ClusterIP, NodePort or LoadBalancer (default:
    /// kubernetes.scheduler-service-type, else ClusterIP).
    #[arg(long)]
    pub scheduler_service_type: Option<String>,
    /// Classic's dedicated-pool node affinity: preferred, required or none (default:
    /// kubernetes.apply-default-affinity, else preferred).
    #[arg(long)]
    pub apply_default_affinity: Option<DefaultAffinity>,
    /// Start Jupyter on the scheduler (`dask scheduler --jupyter`).
    #[arg(long)]
    pub jupyter: bool,
    /// TLS between client, scheduler and workers: cluster-ca (a certificate authority made
    /// for this cluster; `up` writes the client's copy and prints how to use it), provided
    /// (the templates configure Dask's TLS themselves), or off (plain tcp://, open to
    /// anyone who reaches the scheduler). Default: kubernetes.tls, else cluster-ca.
    #[arg(long, value_parser = parse_tls)]
    pub tls: Option<TlsMode>,
}

fn parse_tls(text: &str) -> std::result::Result<TlsMode, String> {
    text.parse().map_err(|e: Error| e.to_string())
}

/// `--start-window`: at least one pod must be let start, or no worker ever would.
fn parse_start_window(value: &str) -> std::result::Result<usize, String> {
    match value.parse::<usize>() {
        Ok(0) => Err("must be at least 1: with 0 no worker pod would ever start".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("not a count of pods: {e}")),
    }
}

/// `NAME=VALUE`.
fn parse_env(text: &str) -> std::result::Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_owned(), value.to_owned())),
        _ => Err(format!("{text:?} is not NAME=VALUE")),
    }
}

impl ClusterFlags {
    /// The request these flags ask for.
    pub fn request(&self) -> Result<ClusterRequest> {
        let ClusterFlags {
            file,
            image,
            env,
            name,
            scheduler_template,
            scheduler_options,
            scheduler_address,
            scheduler_api_address,
            target_duration,
            idle_timeout,
            scheduler_service_type,
            apply_default_affinity,
            jupyter,
            tls,
        } = self;
        Ok(ClusterRequest {
            worker_template: file.clone().map(TemplateSource::File),
            scheduler_template: scheduler_template.clone().map(TemplateSource::File),
            image: image.clone(),
            env: env.iter().cloned().collect(),
            name: name.clone(),
            scheduler_options: scheduler_options.clone(),
            scheduler_address: scheduler_address.clone(),
            scheduler_api_address: scheduler_api_address.clone(),
            target_duration: target_duration.clone(),
            idle_timeout: idle_timeout.clone(),
            scheduler_service_type: scheduler_service_type.clone(),
            apply_default_affinity: *apply_default_affinity,
            jupyter: *jupyter,
            tls: *tls,
            ..ClusterRequest::default()
        })
    }
}

/// `up` arguments.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// What the cluster is made of.
    #[command(flatten)]
    pub cluster: ClusterFlags,
    /// Start this many workers (default: kubernetes.count.start, else 0).
    #[arg(long, conflicts_with = "adapt")]
    pub workers: Option<usize>,
    /// Adapt between MIN:MAX workers.
    #[arg(long)]
    pub adapt: Option<AdaptRange>,
    /// With `--adapt`: adapt from this process (or its detached supervisor) instead of the
    /// cluster's controller pod.
    #[arg(long, requires = "adapt")]
    pub adapt_here: bool,
    /// Leave the cluster running in the background and exit; `dask-kube down NAME` ends it.
    #[arg(long)]
    pub detach: bool,
    /// Local port of the scheduler address (0 picks one).
    #[arg(long, default_value_t = 0)]
    pub local_port: u16,
    /// Seconds to wait for the workers to connect.
    #[arg(long, default_value_t = DEFAULT_WAIT_TIMEOUT.as_secs())]
    pub wait_timeout: u64,
    /// Adapt tuning.
    #[command(flatten)]
    pub tuning: AdaptFlags,
}

impl UpArgs {
    /// The request `up` makes, in `namespace` (the global `--namespace`).
    pub fn request(&self, namespace: Option<&str>) -> Result<ClusterRequest> {
        Ok(ClusterRequest {
            namespace: namespace.map(str::to_owned),
            n_workers: self.workers,
            adapt: self.adapt.map(|range| AdaptRequest {
                minimum: Some(range.min),
                maximum: Some(range.max),
                tuning: self.tuning.tuning(),
                here: self.adapt_here,
            }),
            local_port: self.local_port,
            ..self.cluster.request()?
        })
    }
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
            Output::Text => say(&mut std::io::stdout().lock(), text),
            Output::Json => say(&mut std::io::stdout().lock(), value),
        }
    }
}

/// Runs the command; returns the exit code.
pub async fn run(cli: Cli) -> i32 {
    let Cli {
        namespace,
        kubeconfig,
        context,
        output,
        max_in_flight,
        log: _,
        command,
    } = cli;
    let ui = Ui::new(output);
    let target = Target {
        namespace,
        credentials: credentials_of(kubeconfig, context),
        limits: max_in_flight.map(CreateLimits::with_max_in_flight),
    };
    let result = match command {
        Command::Up(args) => up(args, &target, &ui).await,
        Command::List { all_namespaces } => list(&target, all_namespaces, &ui).await,
        Command::Scale {
            name,
            n,
            force,
            wait,
        } => scale(&name, n, force, wait, &target, &ui).await,
        Command::Adapt {
            name,
            min,
            max,
            off,
            foreground,
            tuning,
        } => {
            let range = match (min, max, off) {
                (Some(min), Some(max), false) => Some(AdaptRange { min, max }),
                _ => None,
            };
            adapt(&name, range, foreground, &tuning, &target).await
        }
        Command::Controller {
            name,
            adapt,
            tuning,
        } => controller(&name, adapt, &tuning, &target).await,
        Command::Logs { name, worker } => logs(&name, worker.as_deref(), &target).await,
        Command::Down { name } => down(&name, &target, &ui).await,
        Command::Tls { name, dir } => tls(&name, dir, &target, &ui).await,
        Command::Render { cluster } => render(&cluster, &target, &ui),
        Command::Attach {
            name,
            adapt,
            local_port,
            dashboard_port,
            tuning,
            daemon,
        } => {
            attach(
                &name,
                adapt,
                (local_port, dashboard_port),
                &tuning,
                daemon,
                &target,
            )
            .await
        }
        Command::Operator { action } => operator(action, &target).await,
        Command::Bench {
            file,
            workers,
            runs,
            planning_only,
        } => bench(file, workers, runs, planning_only, &target).await,
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

/// SIGINT, SIGTERM or SIGHUP as the interruption the library's verbs take: the handlers
/// are installed when this is called, before anything exists.
fn interruption() -> Result<impl std::future::Future<Output = String> + Unpin> {
    let signal = signals::shutdown_signal()?;
    Ok(Box::pin(signal))
}

/// Says on stderr who adapts or ends the cluster: its controller pod, or (when that could
/// not be made) this process.
fn note_controller(report: &UpReport) {
    match (&report.controller, &report.controller_unavailable) {
        (Some(pod), _) => eprintln!(
            "controller pod {pod}: adapts and ends the cluster in the cluster, with no client"
        ),
        (None, Some(why)) => eprintln!(
            "no controller pod ({why}); apply crates/dask-kube/deploy/rbac.yaml in the namespace for one"
        ),
        (None, None) => {}
    }
}

/// What a plain `distributed.Client(address)` here needs, as environment: the dashboard
/// link that answers here (its own guess is the scheduler's port on the forward's host)
/// and, with the cluster's own TLS, the client's certificates.
fn client_env(dashboard: &str, tls: Option<&ClientTlsFiles>) -> Vec<(String, String)> {
    let mut env = vec![(DASHBOARD_LINK_ENV.to_owned(), dashboard.to_owned())];
    if let Some(files) = tls {
        env.extend(files.client_env());
    }
    env
}

/// `export A=1 B=2` (values shell-quoted when they need it).
fn export_line(env: &[(String, String)]) -> String {
    let quoted = |v: &str| {
        if v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-:{}@%+=,".contains(c))
        {
            v.to_owned()
        } else {
            format!("'{}'", v.replace('\'', "'\\''"))
        }
    };
    let pairs: Vec<String> = env
        .iter()
        .map(|(k, v)| format!("{k}={}", quoted(v)))
        .collect();
    format!("export {}", pairs.join(" "))
}

/// Env var Dask reads `distributed.dashboard.link` from.
const DASHBOARD_LINK_ENV: &str = "DASK_DISTRIBUTED__DASHBOARD__LINK";

fn note_cap(cap: Option<CountCap>) {
    if let Some(cap) = cap {
        eprintln!("note: {cap}");
    }
}

/// Writes the client's copy of the certificates `up` made into the state directory.
fn write_client_tls(report: &UpReport) -> Result<Option<ClientTlsFiles>> {
    report
        .client_tls
        .as_ref()
        .map(|tls| {
            tls.write_client_files(&StateDir::from_env().tls_dir(&report.namespace, &report.name))
        })
        .transpose()
}

/// What `attach` prints once its listeners are up: one block, the export line last, since
/// whoever reads up to it (a script, a test, `head`) may stop reading there.
fn attached_text(name: &str, address: &str, dashboard: &str) -> String {
    let tls = if address.starts_with("tls://") {
        format!("TLS: `dask-kube tls {name}` writes the certificate a client presents\n")
    } else {
        String::new()
    };
    format!(
        "scheduler address: {address}\ndashboard: {dashboard}\n{tls}{}",
        export_line(&client_env(dashboard, None))
    )
}

/// Writes `text` and a newline to `out` (stdout). A reader that went away (`dask-kube attach
/// | head -3`, a script that read the address and closed the pipe) is no error: the command's
/// real work, the port-forward a client uses or the cluster in the foreground, goes on.
/// `println!` would panic on the broken pipe and end it.
fn say(out: &mut impl std::io::Write, text: impl std::fmt::Display) {
    if let Err(e) = writeln!(out, "{text}").and_then(|()| out.flush())
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        warn!(error = %e, "cannot write to stdout");
    }
}

/// The lines `up` and `tls` print about TLS: where the files are, and the Python that
/// uses them (the export line covers a plain `Client(address)`).
fn tls_text(tls: TlsMode, files: Option<&ClientTlsFiles>) -> String {
    match (tls, files) {
        (_, Some(files)) => format!(
            "TLS: this cluster's own CA; a client presents the certificate in {dir}: \
             Client(address, security=Security(tls_ca_file=\"{ca}\", tls_client_cert=\"{cert}\", tls_client_key=\"{key}\", require_encryption=True)), \
             the export below, or the Dask config {config}",
            dir = files
                .ca_file
                .parent()
                .map(|d| d.display().to_string())
                .unwrap_or_default(),
            ca = files.ca_file.display(),
            cert = files.cert_file.display(),
            key = files.key_file.display(),
            config = files.dask_config_file.display(),
        ),
        (TlsMode::Provided, None) => {
            "TLS: the templates' own certificates; the client needs its own Security".to_owned()
        }
        (_, None) => "TLS: off (tcp://: anyone who reaches the scheduler can use it)".to_owned(),
    }
}

fn up_json(report: &UpReport, tls_files: Option<&ClientTlsFiles>) -> serde_json::Value {
    let env: serde_json::Map<String, serde_json::Value> = client_env(&report.dashboard, tls_files)
        .into_iter()
        .map(|(k, v)| (k, json!(v)))
        .collect();
    json!({"name": report.name, "namespace": report.namespace,
           "scheduler_address": report.scheduler_address, "dashboard": report.dashboard,
           "dashboard_env": {DASHBOARD_LINK_ENV: report.dashboard},
           "tls": report.tls,
           "security": tls_files.map(ClientTlsFiles::security_kwargs),
           "dask_config_file": tls_files.map(|f| f.dask_config_file.clone()),
           "client_env": env,
           "workers": report.workers, "capped": report.capped,
           "ready_seconds": report.ready_seconds,
           "supervisor_pid": report.supervisor.as_ref().map(|s| s.pid),
           "controller": report.controller,
           "controller_unavailable": report.controller_unavailable,
           "log": report.supervisor.as_ref().map(|s| s.log.clone())})
}

/// `dask-kube tls NAME`: the client's copy of a running cluster's certificates.
async fn tls(name: &str, dir: Option<PathBuf>, target: &Target, ui: &Ui) -> Result<i32> {
    names::validate_cluster_name(name)?;
    let api = target.api().await?;
    if api.get_pod(name).await?.is_none() {
        return Err(Error::ClusterNotFound {
            name: name.to_owned(),
            namespace: api.namespace().to_owned(),
        });
    }
    let cluster_tls = crate::cluster::read_client_tls(&api, name).await?;
    let dir = dir.unwrap_or_else(|| StateDir::from_env().tls_dir(api.namespace(), name));
    let files = cluster_tls.write_client_files(&dir)?;
    let env: serde_json::Map<String, serde_json::Value> = files
        .client_env()
        .into_iter()
        .map(|(k, v)| (k, json!(v)))
        .collect();
    ui.print(
        &format!(
            "{}\n{}",
            tls_text(TlsMode::ClusterCa, Some(&files)),
            export_line(&files.client_env())
        ),
        json!({"name": name, "namespace": api.namespace(), "security": files.security_kwargs(),
               "dask_config_file": files.dask_config_file, "client_env": env}),
    );
    Ok(exit::OK)
}

async fn up(args: UpArgs, target: &Target, ui: &Ui) -> Result<i32> {
    if args.detach && args.cluster.scheduler_address.is_some() {
        return Err(Error::Usage(
            "--detach needs a scheduler pod; it cannot be used with --scheduler-address".into(),
        ));
    }
    let mut builder = KubeCluster::builder()
        .request(args.request(target.namespace.as_deref())?)
        .on_progress(ui.progress())
        .credentials(target.credentials.clone());
    if let Some(limits) = target.limits {
        builder = builder.create_limits(limits);
    }
    let options = UpOptions {
        detach: if args.detach {
            Some(DetachOptions {
                exe: std::env::current_exe()
                    .map_err(|e| Error::io("locating the dask-kube executable", e))?,
                state_dir: StateDir::from_env(),
            })
        } else {
            None
        },
        wait_timeout: Duration::from_secs(args.wait_timeout),
    };
    let mut signal = interruption()?;
    let outcome = crate::up(builder, options, &mut signal).await?;
    if let UpOutcome::Running(_, report) | UpOutcome::Detached(report) = &outcome {
        note_controller(report);
    }
    let (cluster, report) = match outcome {
        UpOutcome::Interrupted { reason, report } => {
            eprintln!("interrupted ({reason}) while starting; deleted what was created");
            report.into_result("being started")?;
            return Ok(exit::FAILURE);
        }
        UpOutcome::Detached(report) => {
            note_cap(report.capped);
            let tls_files = write_client_tls(&report)?;
            let pid = report.supervisor.as_ref().map_or(0, |s| s.pid);
            ui.print(
                &format!(
                    "cluster {name} in namespace {ns} (detached, supervisor pid {pid})\nscheduler address: {address}\ndashboard: {dashboard}\n{tls}\n{export}\nstop it with: dask-kube down {name} -n {ns}",
                    name = report.name,
                    ns = report.namespace,
                    address = report.scheduler_address,
                    dashboard = report.dashboard,
                    tls = tls_text(report.tls, tls_files.as_ref()),
                    export = export_line(&client_env(&report.dashboard, tls_files.as_ref())),
                ),
                up_json(&report, tls_files.as_ref()),
            );
            return Ok(exit::OK);
        }
        UpOutcome::Running(cluster, report) => (cluster, report),
    };
    note_cap(report.capped);
    let tls_files = write_client_tls(&report)?;
    ui.print(
        &format!(
            "cluster {} in namespace {}\nscheduler address: {}\ndashboard: {}\n{}\n{}\nready in {:.1}s; Ctrl-C retires and deletes the cluster",
            report.name,
            report.namespace,
            report.scheduler_address,
            report.dashboard,
            tls_text(report.tls, tls_files.as_ref()),
            export_line(&client_env(&report.dashboard, tls_files.as_ref())),
            report.ready_seconds
        ),
        up_json(&report, tls_files.as_ref()),
    );
    let s = (&mut signal).await;
    info!(signal = %s, cluster = %report.name, "shutting down");
    StateDir::from_env().remove_tls(&report.namespace, &report.name);
    let closed = cluster.close().await?;
    eprintln!(
        "deleted cluster {}: {} pods, {} workers retired first",
        report.name, closed.deleted_pods, closed.retired
    );
    Ok(exit::OK)
}

/// Where the verbs act: the namespace, credentials and pacing the global flags name.
struct Target {
    namespace: Option<String>,
    credentials: Credentials,
    limits: Option<CreateLimits>,
}

/// `--kubeconfig` / `--context` as credentials; neither is the default chain.
fn credentials_of(kubeconfig: Option<PathBuf>, context: Option<String>) -> Credentials {
    if kubeconfig.is_none() && context.is_none() {
        Credentials::Default
    } else {
        Credentials::Kubeconfig {
            path: kubeconfig,
            context,
        }
    }
}

impl Target {
    /// How to reach a cluster by name here. No verb but `tls` needs the client's
    /// certificates (scaling, adapting and the supervisor use the scheduler's HTTP API), so
    /// they are not read: a user who may not read Secrets can still scale.
    fn reconnect(&self) -> Reconnect {
        Reconnect {
            namespace: self.namespace.clone(),
            credentials: self.credentials.clone(),
            limits: self.limits,
            skip_client_tls: true,
            ..Reconnect::default()
        }
    }

    /// The calls of the namespace: `--namespace`, `kubernetes.namespace`, or the
    /// credentials'.
    async fn api(&self) -> Result<ClusterApi> {
        let connection = KubeConnection::open(&self.credentials).await?;
        let namespace = match &self.namespace {
            Some(ns) => ns.clone(),
            None => DaskConfig::load()?
                .kube_settings()?
                .namespace
                .unwrap_or_else(|| connection.namespace.clone()),
        };
        Ok(ClusterApi::new(connection.in_namespace(namespace)))
    }
}

async fn list(target: &Target, all: bool, ui: &Ui) -> Result<i32> {
    let api = target.api().await?;
    let rows = list_clusters(&api, all, &StateDir::from_env()).await?;
    let text = if rows.is_empty() {
        format!(
            "no Dask clusters in {}",
            if all {
                "any namespace".to_owned()
            } else {
                format!("namespace {}", api.namespace())
            }
        )
    } else {
        render_rows(&rows)
    };
    ui.print(&text, json!(rows));
    Ok(exit::OK)
}

/// The `list` table.
fn render_rows(rows: &[ClusterRow]) -> String {
    let mut text = format!(
        "{:<16} {:<40} {:<10} {:<22} {:>8}  {:<24} {}",
        "NAMESPACE", "NAME", "STATUS", "WORKERS(run/pend/end)", "AGE", "SUPERVISOR", "DASHBOARD"
    );
    for r in rows {
        let w = &r.workers;
        text.push_str(&format!(
            "\n{:<16} {:<40} {:<10} {:<22} {:>8}  {:<24} {}",
            r.namespace,
            r.name,
            r.status,
            format!("{}/{}/{}", w.running, w.pending, w.finished),
            human_age(r.age_seconds),
            match (&r.supervisor, &r.adapt) {
                (Some(s), Some(a)) => format!("{s} adapt {a}"),
                (Some(s), None) => s.clone(),
                _ => "-".to_owned(),
            },
            r.dashboard.as_deref().unwrap_or("-"),
        ));
    }
    text
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
    target: &Target,
    ui: &Ui,
) -> Result<i32> {
    let cluster = KubeCluster::from_name(name, target.reconnect()).await?;
    let result = cluster.scale_with(n, force).await;
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            cluster.detach().await?;
            return Err(e);
        }
    };
    note_cap(report.capped);
    // What is awaited is what was asked within the cap, never more than can come.
    if wait > 0 && report.target > report.before {
        cluster
            .wait_for_workers(report.target, Duration::from_secs(wait))
            .await?;
    }
    cluster.detach().await?;
    ui.print(
        &format!(
            "{name}: {} -> {} workers (created {}, retired {}, deleted {}{})",
            report.before,
            report.target,
            report.created.len(),
            report.retired.len(),
            report.deleted.len(),
            match report.retried {
                0 => String::new(),
                n => format!("; {n} calls retried while the API server was away or throttling"),
            }
        ),
        serde_json::to_value(&report).unwrap_or_default(),
    );
    Ok(exit::OK)
}

/// `operator crds` and `operator run`: the namespace given is the operator's whole scope
/// (none: every namespace), not a default.
async fn operator(action: OperatorAction, target: &Target) -> Result<i32> {
    match action {
        OperatorAction::Crds => {
            print!("{}", operator_crds_yaml()?);
            Ok(exit::OK)
        }
        OperatorAction::Run {
            scheduler_access,
            reporter,
            start_window,
        } => {
            let in_cluster = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some();
            let scheduler_access = scheduler_access.unwrap_or(if in_cluster {
                SchedulerAccess::Service
            } else {
                SchedulerAccess::PortForward
            });
            let scope = match &target.namespace {
                Some(ns) => OperatorScope::Namespace(ns.clone()),
                None => OperatorScope::AllNamespaces,
            };
            let connection = KubeConnection::open(&target.credentials).await?;
            info!(?scope, ?scheduler_access, server = %connection.server_url, "dask-kube-operator starting");
            run_operator(
                connection,
                OperatorOptions {
                    scope,
                    scheduler_access,
                    reporter,
                    limits: target.limits.unwrap_or_default(),
                    start_window,
                },
            )
            .await?;
            Ok(exit::OK)
        }
    }
}

async fn controller(
    name: &str,
    range: Option<AdaptRange>,
    tuning: &AdaptFlags,
    target: &Target,
) -> Result<i32> {
    let policy = range.map(|r| tuning.policy(r)).transpose()?;
    let signal = interruption()?;
    run_controller(name, target.reconnect(), policy, signal).await?;
    Ok(exit::OK)
}

async fn adapt(
    name: &str,
    range: Option<AdaptRange>,
    foreground: bool,
    tuning: &AdaptFlags,
    target: &Target,
) -> Result<i32> {
    let mut cluster = KubeCluster::from_name(name, target.reconnect()).await?;
    let Some(range) = range else {
        cluster.stop_controller().await?;
        eprintln!(
            "{name}: adapting stopped (controller pod deleted); the workers stay: dask-kube scale {name} N"
        );
        return Ok(exit::OK);
    };
    let policy = tuning.policy(range)?;
    if !foreground {
        let started = cluster
            .adapt_in(policy, AdaptPlacement::Controller)
            .await
            .inspect_err(|_| {
                eprintln!(
                    "{name}: cannot adapt in the cluster; apply crates/dask-kube/deploy/rbac.yaml in namespace {}, or adapt from here with --foreground",
                    cluster.namespace()
                );
            })?;
        note_cap(started.capped);
        let maximum = started.capped.map_or(range.max as usize, |c| c.max);
        eprintln!(
            "{name} adapts between {}:{maximum} workers in the cluster (pod {}), with no client; `dask-kube adapt {name} --off` stops it",
            range.min.min(u32::try_from(maximum).unwrap_or(u32::MAX)),
            started.controller.unwrap_or_default()
        );
        cluster.detach().await?;
        return Ok(exit::OK);
    }
    let mut signal = interruption()?;
    if let Ok(Some(pod)) = cluster.api().get_pod(name).await
        && let Some(other) = pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ADAPT_ANNOTATION))
    {
        warn!(%other, "a detached supervisor also adapts this cluster; the two controllers will fight");
    }
    let started = cluster.adapt_in(policy, AdaptPlacement::Here).await?;
    note_cap(started.capped);
    let maximum = started.capped.map_or(range.max as usize, |c| c.max);
    eprintln!(
        "adapting {name} between {}:{maximum} workers; Ctrl-C stops adapting (the cluster stays)",
        range.min.min(u32::try_from(maximum).unwrap_or(u32::MAX))
    );
    let s = (&mut signal).await;
    info!(signal = %s, "stopping");
    cluster.detach().await?;
    Ok(exit::OK)
}

async fn logs(name: &str, worker: Option<&str>, target: &Target) -> Result<i32> {
    let api = target.api().await?;
    let pods = cluster_logs(&api, name, worker).await?;
    let single = pods.len() == 1;
    for (pod, text) in pods {
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

async fn down(name: &str, target: &Target, ui: &Ui) -> Result<i32> {
    names::validate_cluster_name(name)?;
    let api = target.api().await?;
    let ns = api.namespace().to_owned();
    let (stopped, report) = delete_cluster(&api, name, &StateDir::from_env()).await?;
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

fn render(cluster: &ClusterFlags, target: &Target, ui: &Ui) -> Result<i32> {
    let mut request = cluster.request()?;
    request.namespace.clone_from(&target.namespace);
    let resolved = KubeCluster::builder().request(request).resolve()?;
    let objects = resolved.render(&offline_default_namespace(&target.credentials))?;
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
    (local_port, dashboard_port): (u16, u16),
    tuning: &AdaptFlags,
    daemon: bool,
    target: &Target,
) -> Result<i32> {
    let options = AttachOptions {
        adapt: adapt.map(|r| tuning.policy(r)).transpose()?,
        local_port,
        dashboard_port,
        daemon,
    };
    let mut signal = interruption()?;
    supervise(
        name,
        target.reconnect(),
        options,
        &StateDir::from_env(),
        &mut signal,
        |state| {
            if !daemon {
                say(
                    &mut std::io::stdout().lock(),
                    attached_text(name, &state.address, &state.dashboard),
                );
            }
        },
    )
    .await?;
    Ok(exit::OK)
}

async fn bench(
    file: PathBuf,
    workers: usize,
    runs: usize,
    planning_only: bool,
    target: &Target,
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
            .name_template("bench-{uuid}")
            .credentials(target.credentials.clone());
        if let Some(ns) = &target.namespace {
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

    /// A stdout whose reader went away.
    struct ClosedPipe;

    impl std::io::Write for ClosedPipe {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
    }

    #[test]
    fn a_closed_stdout_does_not_end_the_command() {
        say(&mut ClosedPipe, "scheduler address: tls://127.0.0.1:8786");
        let mut out = Vec::new();
        say(&mut out, "dashboard: http://127.0.0.1:8787/status");
        assert_eq!(out, b"dashboard: http://127.0.0.1:8787/status\n");
    }

    #[rstest]
    #[case::tls("tls://127.0.0.1:8786", true)]
    #[case::plain("tcp://127.0.0.1:8786", false)]
    fn attach_prints_the_export_line_last(#[case] address: &str, #[case] tls_hint: bool) {
        let text = attached_text("c", address, "http://127.0.0.1:8787/status");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], format!("scheduler address: {address}"));
        assert!(lines.last().unwrap().starts_with("export "), "{text}");
        assert_eq!(text.contains("dask-kube tls c"), tls_hint, "{text}");
    }
    use clap::CommandFactory;
    use rstest::rstest;

    #[test]
    fn cli_definition_is_valid() {
        Cli::command().debug_assert();
    }

    /// What `up` prints for a shell: one `export` with the dashboard link and, with the
    /// cluster's own TLS, Dask's client settings pointing at the written files.
    #[rstest]
    #[case::no_tls(
        None,
        "export DASK_DISTRIBUTED__DASHBOARD__LINK=http://127.0.0.1:8787/status"
    )]
    #[case::cluster_ca(
        Some("/st/team_etl.tls"),
        "export DASK_DISTRIBUTED__DASHBOARD__LINK=http://127.0.0.1:8787/status \
         DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION=True \
         DASK_DISTRIBUTED__COMM__TLS__CA_FILE=/st/team_etl.tls/ca.crt \
         DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT=/st/team_etl.tls/tls.crt \
         DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY=/st/team_etl.tls/tls.key"
    )]
    #[case::a_path_with_a_space(
        Some("/my state/x"),
        "export DASK_DISTRIBUTED__DASHBOARD__LINK=http://127.0.0.1:8787/status \
         DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION=True \
         DASK_DISTRIBUTED__COMM__TLS__CA_FILE='/my state/x/ca.crt' \
         DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT='/my state/x/tls.crt' \
         DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY='/my state/x/tls.key'"
    )]
    fn the_export_line_sets_what_a_plain_client_needs(
        #[case] tls_dir: Option<&str>,
        #[case] expected: &str,
    ) {
        let files = tls_dir.map(|d| ClientTlsFiles::in_dir(std::path::Path::new(d)));
        assert_eq!(
            export_line(&client_env("http://127.0.0.1:8787/status", files.as_ref())),
            expected
        );
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
        assert_eq!(up.cluster.scheduler_options, vec!["--idle-timeout=60"]);
        assert!(up.detach);
    }

    #[test]
    fn a_policy_round_trips_through_the_supervisors_attach_args() {
        let policy = AdaptFlags {
            interval: 0.5,
            wait_count: 5,
            cooldown: 10.0,
            max_scale_down_step: Some(2),
            start_window: 4,
        }
        .policy(AdaptRange { min: 1, max: 3 })
        .unwrap();
        let mut argv = vec!["dask-kube".to_owned(), "attach".into(), "c".into()];
        argv.extend(policy.cli_args());
        let cli = Cli::try_parse_from(argv).unwrap();
        let Command::Attach {
            tuning: parsed,
            adapt: Some(range),
            ..
        } = cli.command
        else {
            panic!("not attach with --adapt")
        };
        assert_eq!(parsed.policy(range).unwrap(), policy);
    }
}
