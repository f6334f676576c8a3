//! `policy-runner`: kwctl-style `run` and `bench`, and `serve` as an admission webhook.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand, ValueEnum};
use tracing::info;
use tracing_subscriber::EnvFilter;

use policy_runner::admission::parse_request_document;
use policy_runner::bench::{self, BenchConfig};
use policy_runner::evaluator::{Evaluator, PolicyModule};
use policy_runner::settings::Settings;
use policy_runner::{Error, locate, serve, tls};

/// Runs a Kubewarden policy module (.wasm) the way kwctl and policy-server do.
#[derive(Debug, Parser)]
#[command(name = "policy-runner", version, about)]
struct Cli {
    /// Log filter (tracing EnvFilter syntax); logs go to stderr. Default: `warn` for
    /// run/bench, `info` for serve.
    #[arg(long, env = "POLICY_RUNNER_LOG", global = true)]
    log_level: Option<String>,

    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Evaluate one request and print the AdmissionResponse as one JSON line (kwctl run).
    Run(RunArgs),
    /// Time the per-request evaluation path (kwctl bench).
    Bench(BenchArgs),
    /// Serve the policy as a mutating admission webhook over HTTPS.
    Serve(ServeArgs),
}

#[derive(Debug, Args)]
struct SettingsArgs {
    /// Policy settings file (YAML or JSON).
    #[arg(short = 's', long, conflicts_with = "settings_json")]
    settings_path: Option<PathBuf>,

    /// Policy settings as a JSON object.
    #[arg(long)]
    settings_json: Option<String>,
}

impl SettingsArgs {
    fn load(&self) -> policy_runner::Result<Settings> {
        match (&self.settings_path, &self.settings_json) {
            (Some(path), _) => Settings::from_file(path),
            (None, Some(json)) => Settings::from_json_str(json),
            (None, None) => Ok(Settings::empty()),
        }
    }
}

#[derive(Debug, Args)]
struct RunArgs {
    /// AdmissionRequest or AdmissionReview JSON file.
    #[arg(short = 'r', long)]
    request_path: PathBuf,

    #[command(flatten)]
    settings: SettingsArgs,

    /// Policy metadata (metadata.yml); `mutating: false` makes patches a rejection,
    /// as in policy-server. Without it, mutations are allowed.
    #[arg(short = 'm', long)]
    metadata_path: Option<PathBuf>,

    /// Accepted for kwctl compatibility; this host offers no context-aware capabilities.
    #[arg(long)]
    allow_context_aware: bool,

    /// Policy module: a path or file:// URL.
    module: String,
}

#[derive(Debug, Args)]
struct BenchArgs {
    /// AdmissionRequest or AdmissionReview JSON file.
    #[arg(short = 'r', long)]
    request_path: PathBuf,

    #[command(flatten)]
    settings: SettingsArgs,

    /// Timed evaluations.
    #[arg(long, default_value_t = BenchConfig::default().iterations)]
    iterations: usize,

    /// Untimed evaluations before timing.
    #[arg(long, default_value_t = BenchConfig::default().warmup)]
    warmup: usize,

    /// Also time the policy's `validate_payload` compiled natively, and print the ratio.
    #[arg(long)]
    native: bool,

    /// Report format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    output: OutputFormat,

    /// Accepted for kwctl compatibility (ignored).
    #[arg(short = 'm', long, hide = true)]
    metadata_path: Option<PathBuf>,

    /// Policy module: a path or file:// URL.
    module: String,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum OutputFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Policy module: a path or file:// URL.
    #[arg(long, env = "DASK_POLICY_WASM")]
    module: String,

    #[command(flatten)]
    settings: SettingsArgs,

    /// Served under POST /validate/<policy-name>.
    #[arg(long, default_value = "dask-worker-defaults")]
    policy_name: String,

    /// Listen address (keep it on loopback).
    #[arg(
        long,
        env = "DASK_POLICY_WEBHOOK_LISTEN",
        default_value = "127.0.0.1:8443"
    )]
    listen: SocketAddr,

    /// Where ca.crt, tls.crt and tls.key live; generated when missing.
    #[arg(long, default_value = "webhook-certs")]
    cert_dir: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = match cli.command {
        Command::Serve(_) => "info",
        Command::Run(_) | Command::Bench(_) => "warn",
    };
    init_tracing(
        cli.log_level.as_deref().unwrap_or(default_level),
        cli.log_format,
    );
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Bench(args) => run_bench(args),
        Command::Serve(args) => run_serve(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Error::InvalidSettings(msg)) => {
            // kwctl's exact wording; bats tests match on it.
            eprintln!("Error: Provided settings are not valid: {msg}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("Error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(filter: &str, format: LogFormat) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("warn"));
    // No colour codes in log files (the webhook logs to $STATE_DIR/logs).
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    // A second initialisation can only happen in tests; ignoring it is harmless.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

fn read_request(path: &Path) -> policy_runner::Result<policy_runner::admission::AdmissionRequest> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_owned(),
        source,
    })?;
    parse_request_document(&bytes).map(|(request, _)| request)
}

fn load_module(arg: &str) -> policy_runner::Result<(PathBuf, Arc<PolicyModule>)> {
    let path = locate::module_path(arg)?;
    let module = PolicyModule::from_file(&path)?;
    Ok((path, Arc::new(module)))
}

/// Policy id as policy-server would name it in messages: the module's file stem.
fn policy_id(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "policy".to_owned())
}

fn run(args: RunArgs) -> policy_runner::Result<()> {
    let RunArgs {
        request_path,
        settings,
        metadata_path,
        allow_context_aware: _,
        module,
    } = args;
    let request = read_request(&request_path)?;
    let settings = settings.load()?;
    let allow_mutations = match &metadata_path {
        Some(path) => metadata_mutating(path)?,
        None => true,
    };
    let (path, module) = load_module(&module)?;
    let evaluator = Evaluator::new(module, settings)?
        .with_policy_id(policy_id(&path))
        .with_mutations_allowed(allow_mutations);
    let response = evaluator.evaluate(&request);
    println!("{}", response.to_json_line()?);
    Ok(())
}

/// Reads `mutating` from a Kubewarden metadata file and checks it is a waPC policy.
fn metadata_mutating(path: &Path) -> policy_runner::Result<bool> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_owned(),
        source,
    })?;
    let meta: serde_json::Value = serde_norway::from_str(&text).map_err(|e| Error::Metadata {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    if let Some(mode) = meta.get("executionMode").and_then(|m| m.as_str())
        && mode != "kubewarden-wapc"
    {
        return Err(Error::Metadata {
            path: path.to_owned(),
            message: format!("executionMode {mode:?} is not supported, only \"kubewarden-wapc\""),
        });
    }
    Ok(meta
        .get("mutating")
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(false))
}

fn run_bench(args: BenchArgs) -> policy_runner::Result<()> {
    let BenchArgs {
        request_path,
        settings,
        iterations,
        warmup,
        native,
        output,
        metadata_path: _,
        module,
    } = args;
    let request = read_request(&request_path)?;
    let settings = settings.load()?;
    let path = locate::module_path(&module)?;
    let bytes = std::fs::read(&path).map_err(|source| Error::Io {
        path: path.clone(),
        source,
    })?;
    let native_fn = if native {
        Some(native_validate()?)
    } else {
        None
    };
    let report = bench::run(
        &bytes,
        &settings,
        &request,
        BenchConfig { iterations, warmup },
        native_fn,
    )?;
    match output {
        OutputFormat::Text => print!("{}", report.to_text(&path.display().to_string())),
        OutputFormat::Json => println!(
            "{}",
            serde_json::to_string(&report).map_err(|source| Error::Serialize {
                what: "bench report",
                source,
            })?
        ),
    }
    Ok(())
}

#[cfg(feature = "native")]
fn native_validate() -> policy_runner::Result<bench::NativeValidate<'static>> {
    Ok(&dask_worker_defaults::validate_payload)
}

#[cfg(not(feature = "native"))]
fn native_validate() -> policy_runner::Result<bench::NativeValidate<'static>> {
    Err(Error::Bench(
        "--native needs policy-runner built with `--features native` (links the policy crate)"
            .to_owned(),
    ))
}

fn run_serve(args: ServeArgs) -> policy_runner::Result<()> {
    let ServeArgs {
        module,
        settings,
        policy_name,
        listen,
        cert_dir,
    } = args;
    let settings = settings.load()?;
    let (path, module) = load_module(&module)?;
    let evaluator = Evaluator::new(module, settings)?.with_policy_id(policy_name.clone());
    let certs = tls::ensure_certs(&cert_dir)?;
    let tls_config = tls::server_config(&certs)?;
    let webhook = Arc::new(serve::Webhook::new(
        Arc::new(evaluator),
        policy_name.clone(),
    ));

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|source| Error::Io {
            path: PathBuf::from("<tokio runtime>"),
            source,
        })?;
    runtime.block_on(async move {
        let listener = serve::bind(listen).await?;
        let local = listener.local_addr().unwrap_or(listen);
        info!(
            module = %path.display(),
            %local,
            policy = %policy_name,
            ca = %certs.ca_cert.display(),
            "webhook listening"
        );
        serve::run(listener, tls_config, webhook, shutdown_signal()).await
    })
}

/// Completes on SIGTERM (what `cluster down` sends) or Ctrl-C.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            // Without a SIGTERM handler the default action (terminate) still applies.
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
