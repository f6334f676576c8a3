//! `policy-runner serve`: the policy as an admission webhook, as policy-server serves one
//! policy. What kwctl does (annotate, run, bench) is done by kwctl itself; this stays only
//! until the local cluster's webhook is policy-server (e2e-tests/local-cluster/up.d).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand, ValueEnum};
use tracing::info;
use tracing_subscriber::EnvFilter;

use policy_runner::evaluator::{DEFAULT_TIMEOUT, Evaluator, PolicyModule};
use policy_runner::metadata::{ExecutionMode, PolicyMetadata, PolicyType};
use policy_runner::settings::Settings;
use policy_runner::{Error, locate, serve, tls};

/// Serves a Kubernetes policy module (.wasm) as policy-server does.
#[derive(Debug, Parser)]
#[command(
    name = "policy-runner",
    version,
    about,
    subcommand_required = true,
    arg_required_else_help = true
)]
struct Cli {
    /// Increase verbosity
    #[arg(short = 'v', long)]
    verbose: bool,

    /// Disable colorful output
    #[arg(long)]
    no_color: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the policy as a mutating admission webhook over HTTPS (what policy-server
    /// does for one policy)
    Serve(ServeArgs),
}

/// Settings, with kwctl's flag names.
#[derive(Debug, Args)]
struct SettingsArgs {
    /// File containing the settings for this policy
    #[arg(
        short = 's',
        long,
        value_name = "PATH",
        conflicts_with = "settings_json"
    )]
    settings_path: Option<PathBuf>,

    /// JSON string containing the settings for this policy
    #[arg(long, value_name = "VALUE")]
    settings_json: Option<String>,
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Policy module: a path or file:// URL. An annotated module's metadata applies as
    /// policy-server applies the policy's settings: `mutating: false` turns a patch into
    /// a rejection; a plain module may mutate
    #[arg(long, env = "DASK_POLICY_WASM")]
    module: String,

    #[command(flatten)]
    settings: SettingsArgs,

    /// Served under POST /validate/<policy-name>
    #[arg(long, default_value = "dask-worker-defaults")]
    policy_name: String,

    /// Listen address (keep it on loopback)
    #[arg(
        long,
        env = "DASK_POLICY_WEBHOOK_LISTEN",
        default_value = "127.0.0.1:8443"
    )]
    listen: SocketAddr,

    /// Where ca.crt, tls.crt and tls.key live; generated when missing
    #[arg(long, default_value = "webhook-certs")]
    cert_dir: PathBuf,

    /// Log format
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Log filter for every command (tracing EnvFilter syntax); `-v` means `debug`.
const LOG_ENV: &str = "POLICY_RUNNER_LOG";

fn main() -> ExitCode {
    let cli = Cli::parse();
    let Command::Serve(args) = cli.command;
    let (default_level, format) = ("info", args.log_format);
    let level = if cli.verbose { "debug" } else { default_level };
    init_tracing(level, format, !cli.no_color);
    let result = run_serve(args);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Error::InvalidSettings(msg)) => {
            // kwctl's and policy-server's wording.
            eprintln!("Error: Provided settings are not valid: {msg}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("Error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(default_level: &str, format: LogFormat, color: bool) {
    let filter = std::env::var(LOG_ENV).unwrap_or_else(|_| default_level.to_owned());
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("warn"));
    // No colour codes in log files (the webhook logs to $STATE_DIR/logs).
    let ansi = color && std::io::IsTerminal::is_terminal(&std::io::stderr());
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

fn read_file(path: &Path) -> policy_runner::Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_owned(),
        source,
    })
}

fn load_settings(path: Option<&Path>, json: Option<&str>) -> policy_runner::Result<Settings> {
    match (path, json) {
        (Some(path), _) => Settings::from_file(path),
        (None, Some(json)) => Settings::from_json_str(json),
        (None, None) => Ok(Settings::empty()),
    }
}

/// A module as `serve` loads it: bytes, and the metadata in its custom
/// section when it was annotated.
struct LoadedPolicy {
    path: PathBuf,
    bytes: Vec<u8>,
    metadata: Option<PolicyMetadata>,
}

fn load_policy(arg: &str) -> policy_runner::Result<LoadedPolicy> {
    if arg.ends_with(".yaml") || arg.ends_with(".yml") {
        return Err(Error::Unsupported(format!(
            "{arg}: Kubewarden policy resources in YAML (ClusterAdmissionPolicy, ...) are not supported by policy-runner; pass the module"
        )));
    }
    let path = locate::module_path(arg)?;
    let bytes = read_file(&path)?;
    // A text-format module (a test guest) has no sections to read: it is plain.
    let metadata = if bytes.starts_with(b"\0asm") {
        PolicyMetadata::from_module(&bytes)?
    } else {
        None
    };
    Ok(LoadedPolicy {
        path,
        bytes,
        metadata,
    })
}

/// The runtime an annotated module's metadata asks for (waPC for a plain module); only
/// waPC runs here.
fn check_execution_mode(metadata: Option<&PolicyMetadata>) -> policy_runner::Result<()> {
    let mode = metadata.map(|m| m.execution_mode).unwrap_or_default();
    if mode != ExecutionMode::KubewardenWapc {
        return Err(Error::ExecutionMode(format!(
            "the policy's execution mode is {mode}: policy-runner runs kubewarden-wapc policies only"
        )));
    }
    if metadata.is_some_and(|m| m.policy_type == PolicyType::Raw) {
        return Err(Error::Unsupported(
            "the policy's metadata says policyType: raw: raw policies are not supported by policy-runner".to_owned(),
        ));
    }
    Ok(())
}

fn run_serve(args: ServeArgs) -> policy_runner::Result<()> {
    let ServeArgs {
        module,
        settings,
        policy_name,
        listen,
        cert_dir,
        log_format: _,
    } = args;
    let settings = load_settings(
        settings.settings_path.as_deref(),
        settings.settings_json.as_deref(),
    )?;
    let policy = load_policy(&module)?;
    check_execution_mode(policy.metadata.as_ref())?;
    // policy-server rejects patches of a policy not allowed to mutate; the annotated
    // module's `mutating` says whether this one is.
    let allowed_to_mutate = policy.metadata.as_ref().is_none_or(|m| m.mutating);
    let compiled = Arc::new(PolicyModule::from_bytes(&policy.bytes, DEFAULT_TIMEOUT)?);
    let evaluator = Evaluator::new(compiled, settings)?
        .with_policy_id(policy_name.clone())
        .with_mutations_allowed(allowed_to_mutate);
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
    let path = policy.path;
    let annotated = policy.metadata.is_some();
    runtime.block_on(async move {
        let listener = serve::bind(listen).await?;
        let local = listener.local_addr().unwrap_or(listen);
        info!(
            module = %path.display(),
            annotated,
            allowed_to_mutate,
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
