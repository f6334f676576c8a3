//! `node-agent`: run the agent, clean up after it, or (internally) start a container.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing::info;

use node_agent::agent::{self, AgentOptions};
use node_agent::ipam::Subnet;
use node_agent::netns::{PodNetwork, instance_tag};
use node_agent::{cleanup, container_init, node};

#[derive(Parser)]
#[command(
    name = "node-agent",
    version,
    about = "Kubelet + scheduler for one node of the local test cluster: pods run as local processes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

fn default_state_dir() -> PathBuf {
    std::env::var_os("DASK_K8S_STATE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/root"));
            home.join(".cache/dask-on-k8s/cluster")
        })
}

fn default_venv() -> PathBuf {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"));
    home.join(".cache/dask-on-k8s/venv")
}

/// The directory of this binary: cargo puts `dask-kube` next to `node-agent`.
fn default_dask_kube_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("/usr/local/bin"))
}

/// Settings that name what an agent instance creates (shared by `run` and `cleanup`).
#[derive(clap::Args, Clone)]
struct Instance {
    /// Node name.
    #[arg(long, env = "NODE_AGENT_NODE_NAME", default_value = "local-node")]
    node_name: String,
    /// State directory (pod directories with logs and hosts files); default
    /// `$DASK_K8S_STATE_DIR` or ~/.cache/dask-on-k8s/cluster.
    #[arg(long, env = "NODE_AGENT_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Linux bridge the pods are plugged into.
    #[arg(long, env = "NODE_AGENT_BRIDGE", default_value = "dkbr0")]
    bridge: String,
    /// Pod subnet; the bridge gets its first address.
    #[arg(long, env = "NODE_AGENT_POD_SUBNET", default_value = "10.244.0.0/24")]
    pod_subnet: String,
}

// Parsed once at startup: the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run the agent until SIGTERM/SIGINT.
    Run {
        #[command(flatten)]
        instance: Instance,
        /// Kubeconfig (default: <state dir>/kubeconfig).
        #[arg(long, env = "KUBECONFIG")]
        kubeconfig: Option<PathBuf>,
        /// Image mapping file (YAML, see README); default: built-in mapping to --venv.
        #[arg(long, env = "NODE_AGENT_CONFIG")]
        config: Option<PathBuf>,
        /// Python venv of the built-in image mapping.
        #[arg(long, env = "NODE_AGENT_VENV")]
        venv: Option<PathBuf>,
        /// Directory of the dask-kube binary for the built-in image mapping (default: this
        /// binary's directory, where cargo builds both).
        #[arg(long, env = "NODE_AGENT_DASK_KUBE_DIR")]
        dask_kube_dir: Option<PathBuf>,
        /// Service CIDR routed from pods to the service proxy (repeatable; default: the
        /// cluster's ServiceCIDR objects).
        #[arg(long = "service-cidr", value_name = "CIDR")]
        service_cidrs: Vec<String>,
        /// Kubelet HTTPS port on 127.0.0.1 (logs, port-forward).
        #[arg(long, env = "NODE_AGENT_KUBELET_PORT", default_value_t = 10250)]
        kubelet_port: u16,
        /// Node taint `key=value:Effect` (repeatable).
        #[arg(long = "taint", value_name = "TAINT")]
        taints: Vec<String>,
        /// Node label `key=value` (repeatable).
        #[arg(long = "node-label", value_name = "LABEL")]
        labels: Vec<String>,
        /// Cpu capacity (default: the machine's cores).
        #[arg(long, env = "NODE_AGENT_CPU")]
        cpu: Option<String>,
        /// Memory capacity (default: the machine's memory).
        #[arg(long, env = "NODE_AGENT_MEMORY")]
        memory: Option<String>,
        /// Pod capacity.
        #[arg(long, env = "NODE_AGENT_MAX_PODS", default_value_t = 110)]
        max_pods: u32,
        /// Do not run the scheduler in this agent (another agent schedules for all nodes).
        #[arg(long)]
        no_scheduler: bool,
        /// Cluster DNS domain.
        #[arg(long, default_value = "cluster.local")]
        cluster_domain: String,
        /// Upper bound (seconds) of pod grace periods when the agent stops.
        #[arg(long, default_value_t = 10)]
        shutdown_grace: u64,
        /// On exit delete the Node and force-delete its pods (for throwaway test agents).
        #[arg(long)]
        delete_node_on_exit: bool,
    },
    /// Kill leftover pod processes and delete this instance's network namespaces (and bridge).
    Cleanup {
        #[command(flatten)]
        instance: Instance,
        /// Also delete the bridge.
        #[arg(long)]
        remove_bridge: bool,
    },
    /// Print the built-in image mapping (YAML) for a venv, to start a config file from.
    DefaultConfig {
        /// Python venv the dask and python images map to.
        #[arg(long, env = "NODE_AGENT_VENV")]
        venv: Option<PathBuf>,
        /// Directory of the dask-kube binary the dask-kube image maps to (default: this
        /// binary's directory).
        #[arg(long, env = "NODE_AGENT_DASK_KUBE_DIR")]
        dask_kube_dir: Option<PathBuf>,
    },
    /// Internal: the first process of a container (enters the pod namespaces, execs argv).
    #[command(hide = true)]
    ContainerInit {
        #[arg(long)]
        netns: PathBuf,
        #[arg(long)]
        hosts: PathBuf,
        #[arg(long)]
        hostname: String,
        /// Scratch directory for making mount points.
        #[arg(long)]
        staging: PathBuf,
        /// A volume bind mount: `ro|rw SOURCE TARGET` (repeatable).
        #[arg(long = "mount", num_args = 3, value_names = ["MODE", "SOURCE", "TARGET"])]
        mounts: Vec<OsString>,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        argv: Vec<OsString>,
    },
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,kube_runtime=warn,kube_client=warn")
    });
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::ContainerInit {
            netns,
            hosts,
            hostname,
            staging,
            mounts,
            argv,
        } => {
            // Single-threaded and before any runtime: setns/unshare need that.
            let run = container_init::parse_mounts(&mounts).and_then(|mounts| {
                container_init::run(&netns, &hosts, &hostname, &mounts, &staging, &argv)
            });
            match run {
                Ok(never) => match never {},
                Err(e) => {
                    eprintln!("node-agent container-init: {e}");
                    std::process::exit(128);
                }
            }
        }
        Command::DefaultConfig {
            venv,
            dask_kube_dir,
        } => {
            print!(
                "{}",
                node_agent::config::default_yaml(
                    &venv.unwrap_or_else(default_venv),
                    &dask_kube_dir.unwrap_or_else(default_dask_kube_dir)
                )
            );
            Ok(())
        }
        Command::Cleanup {
            instance,
            remove_bridge,
        } => {
            init_tracing();
            let rt = tokio::runtime::Runtime::new().context("starting the runtime")?;
            rt.block_on(async {
                let state_dir = instance.state_dir.clone().unwrap_or_else(default_state_dir);
                let subnet: Subnet = instance.pod_subnet.parse()?;
                let network = PodNetwork {
                    bridge: instance.bridge.clone(),
                    subnet,
                    tag: instance_tag(&state_dir, &instance.node_name),
                    service_cidrs: Vec::new(),
                };
                let swept = cleanup::sweep(&state_dir, &network).await;
                if remove_bridge {
                    network.remove_bridge().await;
                }
                info!(
                    processes = swept.processes,
                    namespaces = swept.namespaces,
                    "cleanup done"
                );
                Ok(())
            })
        }
        Command::Run {
            instance,
            kubeconfig,
            config,
            venv,
            dask_kube_dir,
            service_cidrs,
            kubelet_port,
            taints,
            labels,
            cpu,
            memory,
            max_pods,
            no_scheduler,
            cluster_domain,
            shutdown_grace,
            delete_node_on_exit,
        } => {
            init_tracing();
            let state_dir = instance.state_dir.clone().unwrap_or_else(default_state_dir);
            let (machine_cpu, machine_mem) = node::machine_capacity();
            let taints = taints
                .iter()
                .map(|t| node::parse_taint(t))
                .collect::<Result<Vec<_>, _>>()?;
            let labels = labels
                .iter()
                .map(|l| node::parse_label(l))
                .collect::<Result<BTreeMap<_, _>, _>>()?;
            for q in [cpu.as_deref(), memory.as_deref()].into_iter().flatten() {
                node_agent::quantity::parse(q)?;
            }
            let opts = AgentOptions {
                kubeconfig: kubeconfig.unwrap_or_else(|| state_dir.join("kubeconfig")),
                node_name: instance.node_name,
                state_dir,
                config,
                venv: venv.unwrap_or_else(default_venv),
                dask_kube_dir: dask_kube_dir.unwrap_or_else(default_dask_kube_dir),
                service_cidrs,
                kubelet_port,
                pod_subnet: instance.pod_subnet.parse()?,
                bridge: instance.bridge,
                taints,
                labels,
                cpu: cpu.unwrap_or(machine_cpu),
                memory: memory.unwrap_or(machine_mem),
                max_pods,
                scheduler: !no_scheduler,
                cluster_domain,
                shutdown_grace: Duration::from_secs(shutdown_grace),
                delete_node_on_exit,
            };
            let rt = tokio::runtime::Runtime::new().context("starting the runtime")?;
            rt.block_on(async {
                let cancel = CancellationToken::new();
                let signals = cancel.clone();
                tokio::spawn(async move {
                    use tokio::signal::unix::{SignalKind, signal};
                    let (Ok(mut term), Ok(mut int)) = (
                        signal(SignalKind::terminate()),
                        signal(SignalKind::interrupt()),
                    ) else {
                        tracing::error!("cannot install signal handlers");
                        return;
                    };
                    tokio::select! {
                        _ = term.recv() => info!("SIGTERM received"),
                        _ = int.recv() => info!("SIGINT received"),
                    }
                    signals.cancel();
                });
                agent::run(opts, cancel).await
            })?;
            Ok(())
        }
    }
}
