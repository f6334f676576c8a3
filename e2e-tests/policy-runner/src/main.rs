//! `policy-runner`: kwctl's `annotate`, `run` and `bench` with kwctl 1.36's flags, plus
//! `serve` (the policy as an admission webhook, as policy-server serves it) and
//! `timings` (per-phase figures, optionally against the policy compiled natively).

use std::io::Read as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand, ValueEnum};
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;

use policy_runner::admission::{AdmissionRequest, parse_request_document};
use policy_runner::bench::{self, BenchConfig, KwctlBenchFlags};
use policy_runner::evaluator::{DEFAULT_TIMEOUT, Evaluator, PolicyModule};
use policy_runner::metadata::{
    ExecutionMode, PolicyMetadata, PolicyType, ProtocolVersion, resolve_execution_mode,
};
use policy_runner::settings::Settings;
use policy_runner::{Error, annotate, locate, serve, tls};

/// Runs Kubewarden policy modules (.wasm) the way kwctl and policy-server do.
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
    /// Add Kubewarden metadata to a WebAssembly module
    Annotate(AnnotateArgs),
    /// Benchmarks a Kubewarden policy
    Bench(BenchArgs),
    /// Runs a Kubewarden policy from a given URI
    Run(RunArgs),
    /// Serve the policy as a mutating admission webhook over HTTPS (not a kwctl command:
    /// what policy-server does for one policy)
    Serve(ServeArgs),
    /// Per-phase timings of the per-request path (fresh instance, validate, response),
    /// medians and p99, optionally against the policy compiled natively (not a kwctl
    /// command)
    Timings(TimingsArgs),
}

/// `kwctl annotate`'s arguments.
#[derive(Debug, Args)]
struct AnnotateArgs {
    /// File containing the metadata
    #[arg(short = 'm', long, value_name = "PATH")]
    metadata_path: PathBuf,

    /// Output file
    #[arg(short = 'o', long, value_name = "PATH")]
    output_path: PathBuf,

    /// File containing the usage information of the policy
    #[arg(short = 'u', long, value_name = "PATH")]
    usage_path: Option<PathBuf>,

    /// Path to WebAssembly module to be annotated
    #[arg(value_name = "wasm-path")]
    wasm_path: PathBuf,
}

/// The arguments `kwctl run` and `kwctl bench` share (kwctl's `run_args()`).
#[derive(Debug, Args)]
struct RunArgs {
    /// Grant access to the Kubernetes resources defined inside of the policy's
    /// `contextAwareResources` section. This host answers no Kubernetes lookups, so the
    /// grant changes nothing
    #[arg(long)]
    allow_context_aware: bool,

    /// Host capabilities the policy is allowed to use. Use '*' to allow all. This host
    /// answers no host capability (only the SDK's logging call), whatever the list
    #[arg(
        long,
        value_name = "allowed-host-capabilities",
        num_args = 0..,
        default_values_t = [String::from("*")]
    )]
    allowed_host_capabilities: Vec<String>,

    /// Expected email in Fulcio certificate (signature verification: not supported)
    #[arg(long, value_name = "VALUE")]
    cert_email: Option<String>,

    /// Expected OIDC issuer in Fulcio certificates (signature verification: not
    /// supported)
    #[arg(long, value_name = "VALUE")]
    cert_oidc_issuer: Option<String>,

    /// Turn off usage of wasmtime cache (this host keeps no cache)
    #[arg(long)]
    disable_wasmtime_cache: bool,

    /// Path to a directory containing the Docker 'config.json' file (used to pull
    /// remote modules, which this host does not do)
    #[arg(long, value_name = "PATH")]
    docker_config_json_path: Option<PathBuf>,

    /// The runtime to use to execute this policy (this host runs `kubewarden`, i.e.
    /// waPC, policies)
    #[arg(short = 'e', long, value_name = "MODE", value_parser = ExecutionMode::CLI_VALUES)]
    execution_mode: Option<String>,

    /// GitHub owner expected in the certificates generated in CD pipelines (signature
    /// verification: not supported)
    #[arg(long, value_name = "VALUE")]
    github_owner: Option<String>,

    /// GitHub repository expected in the certificates generated in CD pipelines
    /// (signature verification: not supported)
    #[arg(long, value_name = "VALUE")]
    github_repo: Option<String>,

    /// Validate a raw request (raw policies: not supported)
    #[arg(long)]
    raw: bool,

    /// Record all the policy and host capabilities communications to the given file
    /// (not supported)
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with = "replay_host_capabilities_interactions"
    )]
    record_host_capabilities_interactions: Option<PathBuf>,

    /// Replay the host capabilities answers found in the given file (not supported)
    #[arg(long, value_name = "FILE")]
    replay_host_capabilities_interactions: Option<PathBuf>,

    /// File containing the Kubernetes admission request object in JSON format (an
    /// AdmissionRequest or an AdmissionReview; `-` reads stdin)
    #[arg(short = 'r', long, value_name = "PATH")]
    request_path: String,

    /// JSON string containing the settings for this policy
    #[arg(long, value_name = "VALUE", conflicts_with = "settings_path")]
    settings_json: Option<String>,

    /// File containing the settings for this policy
    #[arg(short = 's', long, value_name = "PATH")]
    settings_path: Option<PathBuf>,

    /// JSON-formatted Sigstore ClientTrustConfig (signature verification: not supported)
    #[arg(long, value_name = "PATH")]
    sigstore_trust_config: Option<PathBuf>,

    /// YAML file holding source information (used to pull remote modules, which this
    /// host does not do)
    #[arg(long, value_name = "PATH")]
    sources_path: Option<PathBuf>,

    /// Annotation in key=value format (signature verification: not supported)
    #[arg(short = 'a', long, value_name = "KEY=VALUE")]
    verification_annotation: Vec<String>,

    /// YAML file holding verification config information (signature verification: not
    /// supported)
    #[arg(long, value_name = "PATH")]
    verification_config_path: Option<PathBuf>,

    /// Path to key used to verify the policy (signature verification: not supported)
    #[arg(short = 'k', long, value_name = "PATH")]
    verification_key: Vec<PathBuf>,

    /// Policy module: a local path or a file:// URL, plain or annotated
    #[arg(value_name = "uri_or_sha_prefix_or_yaml_file")]
    uri_or_sha_prefix_or_yaml_file: String,
}

/// `kwctl bench`'s arguments: `run`'s plus tiny-bench's tuning.
#[derive(Debug, Args)]
struct BenchArgs {
    #[command(flatten)]
    run: RunArgs,

    /// Puts results in target/tiny-bench/label/.. if target can be found. used for
    /// comparing previous runs (any value turns it on, as in kwctl)
    #[arg(long, value_name = "DUMP_RESULTS_TO_DISK")]
    dump_results_to_disk: Option<String>,

    /// How long the bench 'should' run, num_samples is prioritized so benching will take
    /// longer to be able to collect num_samples if the code to be benched is slower than
    /// this time limit allowed
    #[arg(long, value_name = "SECONDS")]
    measurement_time: Option<u64>,

    /// How many resamples should be done
    #[arg(long, value_name = "NUM")]
    num_resamples: Option<usize>,

    /// How many samples should be taken. Recommended at least 50
    #[arg(long, value_name = "NUM")]
    num_samples: Option<usize>,

    /// How long the bench should warm up
    #[arg(long, value_name = "SECONDS")]
    warm_up_time: Option<u64>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum OutputFormat {
    Text,
    Json,
}

/// Settings as the non-kwctl commands take them (kwctl's flag names).
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
struct TimingsArgs {
    /// AdmissionRequest or AdmissionReview JSON file
    #[arg(short = 'r', long, value_name = "PATH")]
    request_path: String,

    #[command(flatten)]
    settings: SettingsArgs,

    /// Timed evaluations
    #[arg(long, default_value_t = BenchConfig::default().iterations)]
    iterations: usize,

    /// Untimed evaluations before timing
    #[arg(long, default_value_t = BenchConfig::default().warmup)]
    warmup: usize,

    /// Also time the policy's `validate_payload` compiled natively, and print the ratio
    /// (needs policy-runner built with `--features native`)
    #[arg(long)]
    native: bool,

    /// Report format
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    output: OutputFormat,

    /// Policy module: a path or file:// URL, plain or annotated
    module: String,
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
    let (default_level, format) = match &cli.command {
        Command::Serve(args) => ("info", args.log_format),
        _ => ("warn", LogFormat::Text),
    };
    let level = if cli.verbose { "debug" } else { default_level };
    init_tracing(level, format, !cli.no_color);
    let result = match cli.command {
        Command::Annotate(args) => run_annotate(args),
        Command::Run(args) => run_run(args),
        Command::Bench(args) => run_bench(args),
        Command::Serve(args) => run_serve(args),
        Command::Timings(args) => run_timings(args),
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

fn read_text(path: &Path) -> policy_runner::Result<String> {
    std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_owned(),
        source,
    })
}

/// `--request-path`: a file, or `-` for stdin as in kwctl.
fn read_request(arg: &str) -> policy_runner::Result<AdmissionRequest> {
    let bytes = if arg == "-" {
        let mut buffer = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buffer)
            .map_err(|source| Error::Io {
                path: PathBuf::from("<stdin>"),
                source,
            })?;
        buffer
    } else {
        read_file(Path::new(arg))?
    };
    parse_request_document(&bytes).map(|(request, _)| request)
}

fn load_settings(path: Option<&Path>, json: Option<&str>) -> policy_runner::Result<Settings> {
    match (path, json) {
        (Some(path), _) => Settings::from_file(path),
        (None, Some(json)) => Settings::from_json_str(json),
        (None, None) => Ok(Settings::empty()),
    }
}

/// A module as `run`, `bench` and `serve` load it: bytes, and the metadata in its custom
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

/// The runtime for this policy as kwctl picks it; only waPC runs here.
fn check_execution_mode(
    metadata: Option<&PolicyMetadata>,
    flag: Option<&str>,
) -> policy_runner::Result<()> {
    let from_cli = flag.and_then(ExecutionMode::from_cli);
    let mode = resolve_execution_mode(metadata, from_cli);
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

/// kwctl flags whose feature this host lacks: refused with the reason instead of being
/// silently ignored (a user who asked for signature verification must not get a run
/// that verified nothing).
fn refuse_unsupported(args: &RunArgs) -> policy_runner::Result<()> {
    let verification = [
        ("--verification-key", !args.verification_key.is_empty()),
        (
            "--verification-annotation",
            !args.verification_annotation.is_empty(),
        ),
        (
            "--verification-config-path",
            args.verification_config_path.is_some(),
        ),
        ("--cert-email", args.cert_email.is_some()),
        ("--cert-oidc-issuer", args.cert_oidc_issuer.is_some()),
        ("--github-owner", args.github_owner.is_some()),
        ("--github-repo", args.github_repo.is_some()),
        (
            "--sigstore-trust-config",
            args.sigstore_trust_config.is_some(),
        ),
    ];
    if let Some((flag, _)) = verification.iter().find(|(_, given)| *given) {
        return Err(Error::Unsupported(format!(
            "{flag}: policy-runner runs local modules and does not verify Sigstore signatures"
        )));
    }
    let sessions = [
        (
            "--record-host-capabilities-interactions",
            args.record_host_capabilities_interactions.is_some(),
        ),
        (
            "--replay-host-capabilities-interactions",
            args.replay_host_capabilities_interactions.is_some(),
        ),
    ];
    if let Some((flag, _)) = sessions.iter().find(|(_, given)| *given) {
        return Err(Error::Unsupported(format!(
            "{flag}: policy-runner answers no host capabilities (only the SDK's logging call), so it has no sessions to record or replay"
        )));
    }
    if args.raw {
        return Err(Error::Unsupported(
            "--raw: raw policies are not supported by policy-runner".to_owned(),
        ));
    }
    if let Some(path) = &args.sources_path {
        // kwctl reads the file even for a local module; a missing file is an error there too.
        read_file(path)?;
    }
    Ok(())
}

/// What `run` and `bench` evaluate: the compiled module, its settings, the request.
struct Prepared {
    module: Arc<PolicyModule>,
    settings: Settings,
    request: AdmissionRequest,
    policy_id: String,
}

fn prepare(args: &RunArgs) -> policy_runner::Result<Prepared> {
    refuse_unsupported(args)?;
    let policy = load_policy(&args.uri_or_sha_prefix_or_yaml_file)?;
    check_execution_mode(policy.metadata.as_ref(), args.execution_mode.as_deref())?;
    if let Some(meta) = &policy.metadata
        && !meta.context_aware_resources.is_empty()
    {
        warn!(
            resources = ?meta.context_aware_resources,
            "the policy reads Kubernetes resources; policy-runner answers no Kubernetes lookups"
        );
    }
    let request = read_request(&args.request_path)?;
    let settings = load_settings(args.settings_path.as_deref(), args.settings_json.as_deref())?;
    let module = Arc::new(PolicyModule::from_bytes(&policy.bytes, DEFAULT_TIMEOUT)?);
    Ok(Prepared {
        module,
        settings,
        request,
        policy_id: policy_id(&policy.path),
    })
}

/// Policy id as policy-server would name it in messages: the module's file stem.
fn policy_id(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "policy".to_owned())
}

/// `kwctl run`: one JSON line. kwctl applies no `mutating` constraint when running a
/// policy (that is policy-server's), so a patch is returned for any module.
fn run_run(args: RunArgs) -> policy_runner::Result<()> {
    let prepared = prepare(&args)?;
    let evaluator = Evaluator::new(prepared.module, prepared.settings)?
        .with_policy_id(prepared.policy_id)
        .with_mutations_allowed(true);
    let response = evaluator.evaluate(&prepared.request);
    println!("{}", response.to_json_line()?);
    Ok(())
}

fn run_bench(args: BenchArgs) -> policy_runner::Result<()> {
    let prepared = prepare(&args.run)?;
    let flags = KwctlBenchFlags {
        measurement_time: args.measurement_time,
        num_resamples: args.num_resamples,
        num_samples: args.num_samples,
        warm_up_time: args.warm_up_time,
        dump_results_to_disk: args.dump_results_to_disk.is_some(),
    };
    bench::run_like_kwctl(
        &prepared.module,
        &prepared.settings,
        &prepared.request,
        &flags,
    )
}

fn run_annotate(args: AnnotateArgs) -> policy_runner::Result<()> {
    let usage = args.usage_path.as_deref().map(read_text).transpose()?;
    let module = read_file(&args.wasm_path)?;
    let metadata_yaml = read_text(&args.metadata_path)?;
    let annotated = annotate::annotate(&module, &metadata_yaml, usage.as_deref(), |bytes| {
        protocol_version_of(bytes).map_err(|e| e.to_string())
    })?;
    std::fs::write(&args.output_path, &annotated.module).map_err(|source| Error::Io {
        path: args.output_path.clone(),
        source,
    })?;
    info!(
        module = %args.wasm_path.display(),
        output = %args.output_path.display(),
        bytes = annotated.module.len(),
        "annotated"
    );
    Ok(())
}

/// Asks a waPC module which protocol it speaks, as kwctl's backend detection does.
fn protocol_version_of(module: &[u8]) -> policy_runner::Result<ProtocolVersion> {
    let module = PolicyModule::from_bytes(module, DEFAULT_TIMEOUT)?;
    module.instantiate()?.protocol_version()?;
    Ok(ProtocolVersion::V1)
}

fn run_timings(args: TimingsArgs) -> policy_runner::Result<()> {
    let TimingsArgs {
        request_path,
        settings,
        iterations,
        warmup,
        native,
        output,
        module,
    } = args;
    let request = read_request(&request_path)?;
    let settings = load_settings(
        settings.settings_path.as_deref(),
        settings.settings_json.as_deref(),
    )?;
    let policy = load_policy(&module)?;
    check_execution_mode(policy.metadata.as_ref(), None)?;
    let native_fn = if native {
        Some(native_validate()?)
    } else {
        None
    };
    let report = bench::run(
        &policy.bytes,
        &settings,
        &request,
        BenchConfig { iterations, warmup },
        native_fn,
    )?;
    match output {
        OutputFormat::Text => print!("{}", report.to_text(&policy.path.display().to_string())),
        OutputFormat::Json => println!(
            "{}",
            serde_json::to_string(&report).map_err(|source| Error::Serialize {
                what: "timings report",
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
        log_format: _,
    } = args;
    let settings = load_settings(
        settings.settings_path.as_deref(),
        settings.settings_json.as_deref(),
    )?;
    let policy = load_policy(&module)?;
    check_execution_mode(policy.metadata.as_ref(), None)?;
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
