//! The command line: `crds` prints the CRDs, `run` runs the operator. Written as clap
//! `Args` so the `dask-kube` CLI can mount it as its `operator` subcommand.

use crate::context::{SchedulerAccess, Scope};
use crate::controller::{OperatorOptions, run};
use crate::dask_kube_adapter::build_client;
use crate::{Error, Result, crds_yaml};
use clap::{Args, Subcommand};

/// `dask-kube-operator` (later `dask-kube operator`).
#[derive(Debug, Args)]
pub struct OperatorCommand {
    /// What to do.
    #[command(subcommand)]
    pub action: OperatorAction,
}

/// The operator's verbs.
#[derive(Debug, Subcommand)]
pub enum OperatorAction {
    /// Print the CustomResourceDefinitions (DaskCluster, DaskWorkerGroup, DaskAutoscaler,
    /// DaskJob) to apply: `dask-kube-operator crds | kubectl apply -f -`.
    Crds,
    /// Run the operator.
    Run(RunArgs),
}

/// `run`'s options.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Serve only this namespace (a namespaced install, with deploy/rbac-namespace.yaml);
    /// default: every namespace (deploy/rbac-cluster.yaml).
    #[arg(long, env = "DASK_OPERATOR_NAMESPACE")]
    pub namespace: Option<String>,
    /// How to reach schedulers' HTTP API: `service` (cluster DNS, in a pod) or
    /// `port-forward` (outside the cluster). Default: `service` in a pod, else
    /// `port-forward`.
    #[arg(long, value_enum)]
    pub scheduler_access: Option<SchedulerAccess>,
    /// Name in the events' `reportingController`.
    #[arg(long, default_value = "dask-kube-operator")]
    pub reporter: String,
}

impl OperatorCommand {
    /// Runs the command; the process exit code.
    pub async fn run(self) -> i32 {
        match self.execute().await {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("error: {e}");
                1
            }
        }
    }

    async fn execute(self) -> Result<()> {
        match self.action {
            OperatorAction::Crds => {
                print!("{}", crds_yaml()?);
                Ok(())
            }
            OperatorAction::Run(args) => {
                let RunArgs {
                    namespace,
                    scheduler_access,
                    reporter,
                } = args;
                let in_cluster = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some();
                let scheduler_access = scheduler_access.unwrap_or(if in_cluster {
                    SchedulerAccess::Service
                } else {
                    SchedulerAccess::PortForward
                });
                let config = kube::Config::infer()
                    .await
                    .map_err(|e| Error::Credentials(e.to_string()))?;
                let client = build_client(config).map_err(|e| Error::Credentials(e.to_string()))?;
                let scope = match namespace {
                    Some(ns) => Scope::Namespace(ns),
                    None => Scope::AllNamespaces,
                };
                tracing::info!(?scope, ?scheduler_access, "dask-kube-operator starting");
                run(
                    client,
                    OperatorOptions {
                        scope,
                        scheduler_access,
                        reporter,
                    },
                )
                .await
            }
        }
    }
}
