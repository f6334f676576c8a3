//! The client side of an operator: a cluster made by creating a `DaskCluster` and letting
//! the operator of the cluster (dask-kube's, or upstream's kopf) make its scheduler,
//! Service and workers, as dask-kubernetes' operator-era `KubeCluster` does. Scaling sets a
//! worker group's replicas (the operator retires before deleting), adapting is a
//! `DaskAutoscaler`, closing deletes the `DaskCluster` (the garbage collector the rest).
//! Python's `KubeCluster(deploy_mode="operator")` is this.

use crate::cluster::{
    Access, CloseReport, SCHEDULER_API_TIMEOUT, WorkerInfo, describe_pod_status, use_service,
};
use crate::config::format_dashboard_link;
use crate::manifests::{DASHBOARD_PORT, SCHEDULER_PORT, service_name};
use crate::operator::names::{
    CLUSTER_LABEL, COMPONENT_LABEL, SCHEDULER_COMPONENT, WORKER_COMPONENT,
};
use crate::operator::resources::{DaskAutoscaler, DaskCluster, DaskWorkerGroup};
use crate::portforward::{ForwardedStream, LocalForwarder, PodPortConnect};
use crate::scaling::{WorkerPodState, workers_by_pod};
use crate::scheduler_api::{Connect, HttpSchedulerApi, SchedulerApi, TcpConnect};
use crate::{ClusterApi, Error, Result};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::either::Either;
use tracing::{debug, info};

/// Field manager of what the client writes.
const FIELD_MANAGER: &str = "dask-kube";
/// Time between looks while waiting on the operator and the scheduler.
const POLL: Duration = Duration::from_millis(250);

/// What a client does when a `DaskCluster` of the name exists (dask-kubernetes'
/// `CreateMode`, `kubernetes.create-mode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CreateMode {
    /// Create it; one that exists is an error.
    CreateOnly,
    /// Connect to the one that exists, else create it (upstream's default).
    #[default]
    CreateOrConnect,
    /// Connect to the one that exists; none is an error.
    ConnectOnly,
}

impl std::str::FromStr for CreateMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_uppercase().replace('-', "_").as_str() {
            "CREATE_ONLY" => Ok(CreateMode::CreateOnly),
            "CREATE_OR_CONNECT" => Ok(CreateMode::CreateOrConnect),
            "CONNECT_ONLY" => Ok(CreateMode::ConnectOnly),
            _ => Err(Error::Usage(format!(
                "create_mode {s:?}: CREATE_ONLY, CREATE_OR_CONNECT or CONNECT_ONLY"
            ))),
        }
    }
}

impl CreateMode {
    /// Whether to create the cluster, given whether one of its name exists; the error
    /// upstream's client raises otherwise.
    pub fn creates(self, exists: bool, name: &str, namespace: &str) -> Result<bool> {
        match (self, exists) {
            (CreateMode::CreateOnly, true) => Err(Error::Usage(format!(
                "DaskCluster {name} already exists in namespace {namespace} and create_mode is CREATE_ONLY"
            ))),
            (CreateMode::ConnectOnly, false) => Err(Error::ClusterNotFound {
                name: name.to_owned(),
                namespace: namespace.to_owned(),
            }),
            (_, exists) => Ok(!exists),
        }
    }
}

/// How [`OperatorCluster::start`] creates, waits for and reaches a cluster.
#[derive(Debug, Clone)]
pub struct OperatorClusterOptions {
    /// What to do when the `DaskCluster` exists.
    pub create_mode: CreateMode,
    /// Bound on the operator taking the `DaskCluster` (setting its phase) and on its
    /// scheduler pod becoming ready (dask-kubernetes' `resource_timeout`).
    pub resource_timeout: Duration,
    /// How the scheduler is reached: the Service from inside the cluster, else local
    /// listeners carried over port-forward streams to the scheduler pod.
    pub access: Access,
    /// Local port of the scheduler address (0 picks one).
    pub local_port: u16,
    /// Local port of the dashboard (0 picks one).
    pub dashboard_port: u16,
    /// `distributed.dashboard.link`, formatted with the dashboard's host and port.
    pub dashboard_link: String,
    /// What the link's `{VAR}` fields are formatted with.
    pub env: Vec<(String, String)>,
}

impl Default for OperatorClusterOptions {
    fn default() -> Self {
        OperatorClusterOptions {
            create_mode: CreateMode::default(),
            resource_timeout: Duration::from_secs(180),
            access: Access::default(),
            local_port: 0,
            dashboard_port: 0,
            dashboard_link: "{scheme}://{host}:{port}/status".to_owned(),
            env: Vec::new(),
        }
    }
}

/// Opens streams to whichever scheduler pod of a cluster runs when asked: the operator's
/// scheduler Deployment replaces a lost pod, and the next connection reaches the new one.
pub struct SchedulerPodConnect {
    api: ClusterApi,
    cluster: String,
    port: u16,
}

impl SchedulerPodConnect {
    /// The running scheduler pod of `cluster`, at `port`.
    pub fn new(api: ClusterApi, cluster: impl Into<String>, port: u16) -> Self {
        SchedulerPodConnect {
            api,
            cluster: cluster.into(),
            port,
        }
    }
}

impl Connect for SchedulerPodConnect {
    type Io = ForwardedStream;

    async fn connect(&self) -> Result<Self::Io> {
        let pod = running_scheduler_pod(&self.api, &self.cluster)
            .await?
            .ok_or_else(|| Error::SchedulerUnreachable {
                endpoint: self.describe(),
                reason: "no running scheduler pod".into(),
            })?;
        PodPortConnect::new(self.api.pods(), pod, self.port)
            .connect()
            .await
    }

    fn describe(&self) -> String {
        format!(
            "the scheduler pod of DaskCluster {}/{} port {} via port-forward",
            self.api.namespace(),
            self.cluster,
            self.port
        )
    }
}

/// The scheduler's Service from inside the cluster, or its pod by port-forward.
type Reach = Either<TcpConnect, SchedulerPodConnect>;

struct EitherConnect(Reach);

impl Connect for EitherConnect {
    type Io = Either<tokio::net::TcpStream, ForwardedStream>;

    async fn connect(&self) -> Result<Self::Io> {
        match &self.0 {
            Either::Left(tcp) => tcp.connect().await.map(Either::Left),
            Either::Right(pod) => pod.connect().await.map(Either::Right),
        }
    }

    fn describe(&self) -> String {
        match &self.0 {
            Either::Left(tcp) => tcp.describe(),
            Either::Right(pod) => pod.describe(),
        }
    }
}

fn scheduler_selector(cluster: &str) -> String {
    format!("{CLUSTER_LABEL}={cluster},{COMPONENT_LABEL}={SCHEDULER_COMPONENT}")
}

fn worker_selector(cluster: &str) -> String {
    format!("{CLUSTER_LABEL}={cluster},{COMPONENT_LABEL}={WORKER_COMPONENT}")
}

/// The name of a running (not deleting) scheduler pod of `cluster`, a ready one first.
async fn running_scheduler_pod(api: &ClusterApi, cluster: &str) -> Result<Option<String>> {
    let pods = api.list_pods(&scheduler_selector(cluster)).await?;
    Ok(pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .max_by_key(|p| is_ready(p))
        .map(ResourceExt::name_any))
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// A cluster an operator runs from its `DaskCluster`.
pub struct OperatorCluster {
    api: ClusterApi,
    name: String,
    created: bool,
    scheduler: HttpSchedulerApi<EitherConnect>,
    scheduler_address: String,
    dashboard_link: String,
    forwarders: Vec<LocalForwarder>,
    worker_pod: Value,
}

impl OperatorCluster {
    /// Creates `resource` (a `DaskCluster` named `name`; `None` only connects) or connects
    /// to the one that exists, as `options.create_mode` says; waits until the operator has
    /// taken it (its phase set) and its scheduler pod is ready, then reaches the scheduler
    /// and waits for its HTTP API ([`Self::create_or_connect`], then [`Self::reach`]). A
    /// cluster this call created is deleted again when the start fails.
    ///
    /// # Errors
    /// The create mode's refusal, no operator acting within `resource_timeout` (the error
    /// says to start one), a scheduler that does not start (its pod's state), API errors.
    pub async fn start(
        api: ClusterApi,
        name: &str,
        resource: Option<Value>,
        options: &OperatorClusterOptions,
    ) -> Result<Self> {
        let created = Self::create_or_connect(&api, name, resource, options.create_mode).await?;
        match Self::reach(api.clone(), name, options, created).await {
            Ok(cluster) => Ok(cluster),
            Err(e) => {
                if created {
                    let _ = delete_dask_cluster(&api, name).await;
                }
                Err(e)
            }
        }
    }

    /// The first half of [`Self::start`]: creates `resource` or finds the `DaskCluster`
    /// that exists, as `mode` says (`resource` `None`: connect only). Whether it created
    /// it: the caller deletes it when what follows fails or is cancelled.
    ///
    /// # Errors
    /// The create mode's refusal, CRDs not installed, API errors.
    pub async fn create_or_connect(
        api: &ClusterApi,
        name: &str,
        resource: Option<Value>,
        mode: CreateMode,
    ) -> Result<bool> {
        let namespace = api.namespace().to_owned();
        let clusters = dask_clusters(api);
        let existing = clusters
            .get_opt(name)
            .await
            .map_err(|e| kube_error(e, &format!("get DaskCluster {namespace}/{name}")))?;
        let Some(resource) = resource else {
            CreateMode::ConnectOnly.creates(existing.is_some(), name, &namespace)?;
            return Ok(false);
        };
        if !mode.creates(existing.is_some(), name, &namespace)? {
            return Ok(false);
        }
        let object: DaskCluster =
            serde_json::from_value(resource).map_err(|e| Error::InvalidResource {
                kind: "DaskCluster".into(),
                name: name.to_owned(),
                reason: e.to_string(),
            })?;
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PostParams::default()
        };
        match clusters.create(&params, &object).await {
            Ok(_) => {
                info!(cluster = %name, %namespace, "DaskCluster created");
                Ok(true)
            }
            // Made meanwhile by another client: connect, as the mode allows.
            Err(kube::Error::Api(s)) if s.code == 409 && mode == CreateMode::CreateOrConnect => {
                Ok(false)
            }
            Err(kube::Error::Api(s)) if s.code == 404 => Err(Error::Usage(format!(
                "cannot create DaskCluster {name}: the kubernetes.dask.org CRDs are not installed \
                 (dask-kube operator crds | kubectl apply -f -; crates/dask-kube/OPERATOR.md)"
            ))),
            Err(e) => Err(kube_error(
                e,
                &format!("create DaskCluster {namespace}/{name}"),
            )),
        }
    }

    /// The second half of [`Self::start`]: waits until the operator has taken DaskCluster
    /// `name` (its phase set) and its scheduler pod is ready, reaches the scheduler and
    /// waits for its HTTP API. `created` is what [`Self::create_or_connect`] said.
    ///
    /// # Errors
    /// No operator acting within `resource_timeout`, a scheduler that does not become
    /// ready (its pod's state), a scheduler API that does not answer, API errors.
    pub async fn reach(
        api: ClusterApi,
        name: &str,
        options: &OperatorClusterOptions,
        created: bool,
    ) -> Result<Self> {
        let clusters = &dask_clusters(&api);
        let namespace = api.namespace().to_owned();
        let deadline = Instant::now() + options.resource_timeout;
        // The operator takes it: upstream's client waits for the phase the same way.
        let cluster = loop {
            let cluster = clusters
                .get_opt(name)
                .await
                .map_err(|e| kube_error(e, &format!("get DaskCluster {namespace}/{name}")))?
                .ok_or_else(|| Error::ClusterNotFound {
                    name: name.to_owned(),
                    namespace: namespace.clone(),
                })?;
            if cluster
                .status
                .as_ref()
                .and_then(|s| s.phase.as_ref())
                .is_some()
            {
                break cluster;
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: format!(
                        "an operator to act on DaskCluster {namespace}/{name}: is the Dask operator running? \
                         (dask-kube operator run, crates/dask-kube/deploy/operator/)"
                    ),
                    seconds: options.resource_timeout.as_secs(),
                });
            }
            tokio::time::sleep(POLL).await;
        };
        let worker_pod = json!({"spec": cluster.spec.worker.spec});
        // Its scheduler pod runs and is ready (the operator's Deployment made it).
        loop {
            let pods = api.list_pods(&scheduler_selector(name)).await?;
            let live: Vec<&Pod> = pods
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .collect();
            if live.iter().any(|p| is_ready(p)) {
                break;
            }
            if Instant::now() >= deadline {
                let state = live
                    .first()
                    .map(|p| format!("; pod {}{}", p.name_any(), describe_pod_status(p)))
                    .unwrap_or_else(|| "; no scheduler pod".to_owned());
                return Err(Error::Timeout {
                    what: format!(
                        "the scheduler of DaskCluster {namespace}/{name} to be ready{state}"
                    ),
                    seconds: options.resource_timeout.as_secs(),
                });
            }
            tokio::time::sleep(POLL).await;
        }
        let service_host = format!("{}.{namespace}", service_name(name));
        let (reach, address, forwarders, dashboard) =
            if use_service(options.access, &service_host).await {
                (
                    Either::Left(TcpConnect {
                        address: format!("{service_host}:{DASHBOARD_PORT}"),
                    }),
                    format!("tcp://{service_host}:{SCHEDULER_PORT}"),
                    Vec::new(),
                    (service_host.clone(), DASHBOARD_PORT),
                )
            } else {
                let comm = LocalForwarder::start(
                    SocketAddr::from((Ipv4Addr::LOCALHOST, options.local_port)),
                    SchedulerPodConnect::new(api.clone(), name, SCHEDULER_PORT),
                )
                .await?;
                let dashboard = LocalForwarder::start(
                    SocketAddr::from((Ipv4Addr::LOCALHOST, options.dashboard_port)),
                    SchedulerPodConnect::new(api.clone(), name, DASHBOARD_PORT),
                )
                .await?;
                let address = format!("tcp://{}", comm.address());
                let port = dashboard.address().port();
                (
                    Either::Right(SchedulerPodConnect::new(api.clone(), name, DASHBOARD_PORT)),
                    address,
                    vec![comm, dashboard],
                    (Ipv4Addr::LOCALHOST.to_string(), port),
                )
            };
        let scheduler = HttpSchedulerApi::new(EitherConnect(reach));
        let api_deadline = Instant::now() + SCHEDULER_API_TIMEOUT;
        loop {
            match scheduler.adaptive_target().await {
                Ok(_) => break,
                Err(e) if Instant::now() >= api_deadline => {
                    return Err(Error::Timeout {
                        what: format!("the scheduler's HTTP API ({e})"),
                        seconds: SCHEDULER_API_TIMEOUT.as_secs(),
                    });
                }
                Err(e) => {
                    debug!(cluster = %name, error = %e, "the scheduler's HTTP API does not answer yet");
                    tokio::time::sleep(POLL).await;
                }
            }
        }
        let dashboard_link = format_dashboard_link(
            &options.dashboard_link,
            &dashboard.0,
            dashboard.1,
            &options.env,
        )?;
        Ok(OperatorCluster {
            api,
            name: name.to_owned(),
            created,
            scheduler,
            scheduler_address: address,
            dashboard_link,
            forwarders,
            worker_pod,
        })
    }

    /// The cluster's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its namespace.
    pub fn namespace(&self) -> &str {
        self.api.namespace()
    }

    /// Whether this client created the `DaskCluster` (else it connected to one).
    pub fn created(&self) -> bool {
        self.created
    }

    /// The address a `distributed.Client` here connects to.
    pub fn scheduler_address(&self) -> &str {
        &self.scheduler_address
    }

    /// The dashboard link that answers here.
    pub fn dashboard_link(&self) -> &str {
        &self.dashboard_link
    }

    /// The default group's worker pod (`{"spec": ...}` of `spec.worker.spec`).
    pub fn worker_pod(&self) -> &Value {
        &self.worker_pod
    }

    fn groups(&self) -> Api<DaskWorkerGroup> {
        Api::namespaced(self.api.connection().client.clone(), self.api.namespace())
    }

    fn autoscalers(&self) -> Api<DaskAutoscaler> {
        Api::namespaced(self.api.connection().client.clone(), self.api.namespace())
    }

    /// The replicas a worker group (`default`, or one added) asks for now.
    ///
    /// # Errors
    /// No such group, API errors.
    pub async fn replicas(&self, group: &str) -> Result<i64> {
        let name = format!("{}-{group}", self.name);
        let group = self
            .groups()
            .get_opt(&name)
            .await
            .map_err(|e| kube_error(e, &format!("get DaskWorkerGroup {name}")))?
            .ok_or_else(|| Error::ClusterNotFound {
                name,
                namespace: self.api.namespace().to_owned(),
            })?;
        Ok(group.spec.worker.replicas)
    }

    /// Sets a worker group's replicas (`default`, or one added): the operator creates or
    /// retires workers (retiring before deleting).
    ///
    /// # Errors
    /// No such group, API errors.
    pub async fn scale(&self, group: &str, n: u32) -> Result<()> {
        let name = format!("{}-{group}", self.name);
        self.groups()
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"worker": {"replicas": n}}})),
            )
            .await
            .map_err(|e| kube_error(e, &format!("scale DaskWorkerGroup {name}")))?;
        Ok(())
    }

    /// Adapts the default group between `minimum` and `maximum` workers: the
    /// `DaskAutoscaler` named after the cluster, created or updated.
    ///
    /// # Errors
    /// API errors.
    pub async fn adapt(&self, minimum: u32, maximum: u32) -> Result<()> {
        let autoscaler = json!({
            "apiVersion": "kubernetes.dask.org/v1",
            "kind": "DaskAutoscaler",
            "metadata": {"name": self.name, "labels": {CLUSTER_LABEL: self.name, COMPONENT_LABEL: "autoscaler"}},
            "spec": {"cluster": self.name, "minimum": minimum, "maximum": maximum},
        });
        self.autoscalers()
            .patch(
                &self.name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&autoscaler),
            )
            .await
            .map_err(|e| kube_error(e, &format!("apply DaskAutoscaler {}", self.name)))?;
        Ok(())
    }

    /// Stops adapting: deletes the cluster's `DaskAutoscaler` (none is fine).
    ///
    /// # Errors
    /// API errors.
    pub async fn stop_adapting(&self) -> Result<()> {
        match self
            .autoscalers()
            .delete(&self.name, &DeleteParams::default())
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(kube_error(
                e,
                &format!("delete DaskAutoscaler {}", self.name),
            )),
        }
    }

    /// Adds a worker group `<cluster>-<group>` with the default group's worker spec, or
    /// `spec` (a `DaskWorkerGroup`'s `spec.worker`).
    ///
    /// # Errors
    /// API errors (one that exists: already exists).
    pub async fn add_worker_group(&self, group: &str, n: u32, worker: Option<Value>) -> Result<()> {
        let name = format!("{}-{group}", self.name);
        let worker =
            worker.unwrap_or_else(|| json!({"replicas": n, "spec": self.worker_pod["spec"]}));
        let mut worker = worker;
        worker["replicas"] = json!(n);
        let object: DaskWorkerGroup = serde_json::from_value(json!({
            "apiVersion": "kubernetes.dask.org/v1",
            "kind": "DaskWorkerGroup",
            "metadata": {"name": name, "namespace": self.api.namespace()},
            "spec": {"cluster": self.name, "worker": worker},
        }))
        .map_err(|e| Error::InvalidResource {
            kind: "DaskWorkerGroup".into(),
            name: name.clone(),
            reason: e.to_string(),
        })?;
        self.groups()
            .create(&PostParams::default(), &object)
            .await
            .map_err(|e| kube_error(e, &format!("create DaskWorkerGroup {name}")))?;
        Ok(())
    }

    /// Deletes worker group `<cluster>-<group>` (its workers go with it).
    ///
    /// # Errors
    /// API errors.
    pub async fn delete_worker_group(&self, group: &str) -> Result<()> {
        let name = format!("{}-{group}", self.name);
        match self.groups().delete(&name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(kube_error(e, &format!("delete DaskWorkerGroup {name}"))),
        }
    }

    /// The worker pods of every group, and which Dask workers are connected in them.
    ///
    /// # Errors
    /// API errors listing the pods.
    pub async fn workers(&self) -> Result<Vec<WorkerInfo>> {
        let pods: Vec<WorkerPodState> = self
            .api
            .list_pods(&worker_selector(&self.name))
            .await?
            .iter()
            .map(WorkerPodState::from_pod)
            .collect();
        let connected = self.scheduler.workers().await.unwrap_or_default();
        let by_pod = workers_by_pod(&pods, &connected);
        Ok(pods
            .into_iter()
            .map(|p| WorkerInfo {
                connected: by_pod
                    .get(&p.name)
                    .map(|ws| ws.iter().map(|w| w.address.clone()).collect())
                    .unwrap_or_default(),
                pod: p.name,
                phase: p.phase,
                reason: p.reason,
            })
            .collect())
    }

    /// Logs of the scheduler pods and the worker pods, by pod name.
    ///
    /// # Errors
    /// API errors listing the pods.
    pub async fn logs(&self) -> Result<BTreeMap<String, String>> {
        let mut out = BTreeMap::new();
        for selector in [scheduler_selector(&self.name), worker_selector(&self.name)] {
            for pod in self.api.list_pods(&selector).await? {
                let name = pod.name_any();
                let text = match self.api.logs(&name, None).await {
                    Ok(t) => t,
                    Err(e) => format!("<no logs: {e}>"),
                };
                out.insert(name, text);
            }
        }
        Ok(out)
    }

    /// Stops the local listeners; the cluster keeps running.
    pub async fn detach(mut self) {
        for f in self.forwarders.drain(..) {
            f.stop().await;
        }
    }

    /// Deletes the `DaskCluster` (the operator's objects go with it through the garbage
    /// collector) and waits, at most `timeout`, until its pods are gone.
    ///
    /// # Errors
    /// API errors deleting it; pods left after `timeout` are reported in `leftovers`.
    pub async fn close(self, timeout: Duration) -> Result<CloseReport> {
        let selector = format!("{CLUSTER_LABEL}={}", self.name);
        let before: Vec<String> = self
            .api
            .list_pods(&selector)
            .await
            .unwrap_or_default()
            .iter()
            .map(ResourceExt::name_any)
            .collect();
        let api = self.api.clone();
        let name = self.name.clone();
        self.detach().await;
        delete_dask_cluster(&api, &name).await?;
        let leftovers = api.wait_pods_gone(&selector, &before, timeout).await;
        Ok(CloseReport {
            retired: 0,
            deleted_pods: before.len() - leftovers.len(),
            leftovers: leftovers.into_iter().map(|p| format!("pod/{p}")).collect(),
        })
    }
}

fn dask_clusters(api: &ClusterApi) -> Api<DaskCluster> {
    Api::namespaced(api.connection().client.clone(), api.namespace())
}

/// Deletes DaskCluster `name` (gone already is fine): the operator's objects go with it
/// through the garbage collector.
///
/// # Errors
/// API errors.
pub async fn delete_dask_cluster(api: &ClusterApi, name: &str) -> Result<()> {
    match dask_clusters(api)
        .delete(name, &DeleteParams::background())
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(kube_error(
            e,
            &format!("delete DaskCluster {}/{name}", api.namespace()),
        )),
    }
}

/// An API error of the client's own calls, with the API server's sentence.
fn kube_error(source: kube::Error, action: &str) -> Error {
    match source {
        kube::Error::Api(s) if s.code == 403 => Error::Forbidden {
            verb: action.split(' ').next().unwrap_or_default().to_owned(),
            resource: action.split(' ').nth(1).unwrap_or_default().to_owned(),
            namespace: String::new(),
            message: s.message,
        },
        kube::Error::Api(ref s) => Error::Api {
            action: action.to_owned(),
            reason: s.message.clone(),
            source: Box::new(source),
        },
        other => Error::Api {
            action: action.to_owned(),
            reason: other.to_string(),
            source: Box::new(other),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    use crate::apiserver::mock::{api, body_json, ok_json, status};

    fn handle_of(api: ClusterApi) -> OperatorCluster {
        OperatorCluster {
            scheduler: HttpSchedulerApi::new(EitherConnect(Either::Left(TcpConnect {
                address: "127.0.0.1:1".into(),
            }))),
            api,
            name: "etl".into(),
            created: true,
            scheduler_address: "tcp://127.0.0.1:1".into(),
            dashboard_link: String::new(),
            forwarders: Vec::new(),
            worker_pod: json!({"spec": {"containers": [{"name": "worker", "image": "i"}]}}),
        }
    }

    /// What the operator acts on: `scale` sets the group's replicas, `adapt` applies the
    /// cluster's DaskAutoscaler, stopping deletes it (gone already is fine), a new group
    /// carries the default group's worker spec.
    #[tokio::test]
    async fn scale_adapt_and_groups_are_the_operators_resources() {
        let (api, mut handle) = api("team");
        let server = tokio::spawn(async move {
            let (request, send) = handle.next_request().await.unwrap();
            assert_eq!(request.method(), http::Method::PATCH);
            assert_eq!(
                request.uri().path(),
                "/apis/kubernetes.dask.org/v1/namespaces/team/daskworkergroups/etl-default"
            );
            assert_eq!(
                request.headers()["content-type"],
                "application/merge-patch+json"
            );
            assert_eq!(
                body_json(request).await,
                json!({"spec": {"worker": {"replicas": 4}}})
            );
            send.send_response(ok_json(json!({"apiVersion": "kubernetes.dask.org/v1", "kind": "DaskWorkerGroup",
                "metadata": {"name": "etl-default"}, "spec": {"cluster": "etl", "worker": {"replicas": 4, "spec": {}}}})));

            let (request, send) = handle.next_request().await.unwrap();
            assert_eq!(
                request.uri().path(),
                "/apis/kubernetes.dask.org/v1/namespaces/team/daskautoscalers/etl"
            );
            assert!(
                request
                    .uri()
                    .query()
                    .unwrap_or_default()
                    .contains("fieldManager=dask-kube")
            );
            let body = body_json(request).await;
            assert_eq!(
                body["spec"],
                json!({"cluster": "etl", "minimum": 1, "maximum": 5})
            );
            send.send_response(ok_json(
                json!({"apiVersion": "kubernetes.dask.org/v1", "kind": "DaskAutoscaler",
                "metadata": {"name": "etl"}, "spec": body["spec"]}),
            ));

            let (request, send) = handle.next_request().await.unwrap();
            assert_eq!(request.method(), http::Method::DELETE);
            assert_eq!(
                request.uri().path(),
                "/apis/kubernetes.dask.org/v1/namespaces/team/daskautoscalers/etl"
            );
            send.send_response(status(404, "NotFound", "not found", json!({})));

            let (request, send) = handle.next_request().await.unwrap();
            assert_eq!(request.method(), http::Method::POST);
            assert_eq!(
                request.uri().path(),
                "/apis/kubernetes.dask.org/v1/namespaces/team/daskworkergroups"
            );
            let body = body_json(request).await;
            assert_eq!(body["metadata"]["name"], "etl-highmem");
            assert_eq!(body["spec"]["cluster"], "etl");
            assert_eq!(body["spec"]["worker"]["replicas"], 2);
            assert_eq!(
                body["spec"]["worker"]["spec"]["containers"][0]["name"],
                "worker"
            );
            send.send_response(ok_json(body));
        });
        let cluster = handle_of(api);
        let calls = async {
            cluster.scale("default", 4).await.unwrap();
            cluster.adapt(1, 5).await.unwrap();
            cluster.stop_adapting().await.unwrap();
            cluster.add_worker_group("highmem", 2, None).await.unwrap();
        };
        tokio::time::timeout(Duration::from_secs(10), calls)
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .unwrap()
            .unwrap();
    }

    #[rstest]
    #[case::upstream_spelling("CREATE_OR_CONNECT", Some(CreateMode::CreateOrConnect))]
    #[case::lower_with_dashes("create-only", Some(CreateMode::CreateOnly))]
    #[case::connect("CONNECT_ONLY", Some(CreateMode::ConnectOnly))]
    #[case::python_enum_repr("CreateMode.CONNECT_ONLY", None)]
    #[case::typo("CREATE", None)]
    fn create_modes_read_as_upstream_spells_them(
        #[case] text: &str,
        #[case] mode: Option<CreateMode>,
    ) {
        assert_eq!(text.parse::<CreateMode>().ok(), mode);
    }

    /// Upstream's `_start`: CREATE_ONLY refuses an existing cluster, CONNECT_ONLY a missing
    /// one, CREATE_OR_CONNECT creates only what is missing.
    #[rstest]
    #[case::create_only_new(CreateMode::CreateOnly, false, Ok(true))]
    #[case::create_only_exists(CreateMode::CreateOnly, true, Err("already exists"))]
    #[case::create_or_connect_new(CreateMode::CreateOrConnect, false, Ok(true))]
    #[case::create_or_connect_exists(CreateMode::CreateOrConnect, true, Ok(false))]
    #[case::connect_only_exists(CreateMode::ConnectOnly, true, Ok(false))]
    #[case::connect_only_missing(CreateMode::ConnectOnly, false, Err("no Dask cluster \"etl\""))]
    fn what_each_create_mode_does(
        #[case] mode: CreateMode,
        #[case] exists: bool,
        #[case] expected: std::result::Result<bool, &str>,
    ) {
        match (mode.creates(exists, "etl", "team"), expected) {
            (Ok(creates), Ok(want)) => assert_eq!(creates, want),
            (Err(e), Err(needle)) => assert!(e.to_string().contains(needle), "{e}"),
            (got, want) => panic!("{got:?}, expected {want:?}"),
        }
    }
}
