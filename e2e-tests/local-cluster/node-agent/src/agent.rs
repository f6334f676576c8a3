//! The agent process: sets up the node, starts the kubelet API, watches pods, nodes,
//! services and EndpointSlices, runs the service proxy and one [`PodWorker`] per pod bound to
//! this node, and on shutdown stops every pod process and removes what it created.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Node, Pod, Service, Taint};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::ServiceCIDR;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{Api, DeleteParams, ListParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use kube::{Client, Resource, ResourceExt};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::cleanup;
use crate::config::{self, Config};
use crate::context::{NodeContext, all_ready, readiness, recorder};
use crate::dns::HostsManager;
use crate::error::{Error, Result};
use crate::hosts::resolve_services;
use crate::ipam::{Allocator, Subnet};
use crate::memory::MemoryWatchdog;
use crate::netns::{PodNetwork, instance_tag};
use crate::node::{self, NodeSettings};
use crate::proxy::ServiceProxy;
use crate::registry::PodRegistry;
use crate::scheduler::Scheduler;
use crate::worker::PodWorker;

/// Everything the agent is configured with (see `node-agent run --help`).
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// Kubeconfig file.
    pub kubeconfig: PathBuf,
    /// Node name.
    pub node_name: String,
    /// State directory (pod dirs, logs, hosts files, pid files).
    pub state_dir: PathBuf,
    /// Image mapping file; `None` uses the built-in default for `venv`.
    pub config: Option<PathBuf>,
    /// The venv the built-in mapping points at.
    pub venv: PathBuf,
    /// The directory with the dask-kube binary the built-in mapping points at.
    pub dask_kube_dir: PathBuf,
    /// Service CIDRs routed to the service proxy; empty: the cluster's ServiceCIDR objects.
    pub service_cidrs: Vec<String>,
    /// Kubelet HTTPS port on 127.0.0.1.
    pub kubelet_port: u16,
    /// Pod subnet.
    pub pod_subnet: Subnet,
    /// Bridge device.
    pub bridge: String,
    /// Node taints.
    pub taints: Vec<Taint>,
    /// Extra node labels.
    pub labels: BTreeMap<String, String>,
    /// Capacity: cpu.
    pub cpu: String,
    /// Capacity: memory.
    pub memory: String,
    /// Capacity: pods.
    pub max_pods: u32,
    /// Run the scheduler in this agent.
    pub scheduler: bool,
    /// Cluster DNS domain.
    pub cluster_domain: String,
    /// Upper bound of pod grace periods when the agent stops.
    pub shutdown_grace: Duration,
    /// Delete the Node (and force-delete its pods) on exit, as pod GC would for a gone node.
    pub delete_node_on_exit: bool,
}

/// Builds a client from a kubeconfig file.
pub async fn client_from(kubeconfig: &std::path::Path) -> Result<Client> {
    Ok(connect(kubeconfig).await?.0)
}

/// A client from a kubeconfig file, and the apiserver's address (the `kubernetes` Service's
/// backend).
pub async fn connect(kubeconfig: &std::path::Path) -> Result<(Client, SocketAddr)> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).map_err(|e| Error::KubeConfig {
        context: format!("reading {}", kubeconfig.display()),
        source: e,
    })?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await
        .map_err(|e| Error::KubeConfig {
            context: format!("loading {}", kubeconfig.display()),
            source: e,
        })?;
    let url = cfg.cluster_url.clone();
    let host = url
        .host()
        .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_string())
        .ok_or_else(|| Error::Network(format!("apiserver URL {url} has no host")))?;
    let port = url.port_u16().unwrap_or(443);
    let apiserver = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|e| Error::io(format!("resolving the apiserver host {host}"), e))?
        .find(SocketAddr::is_ipv4)
        .ok_or_else(|| Error::Network(format!("apiserver host {host} has no IPv4 address")))?;
    let client = Client::try_from(cfg).map_err(|e| Error::kube("building the client", e))?;
    Ok((client, apiserver))
}

/// Checks an IPv4 CIDR such as `10.96.0.0/16` (the form `ip route` takes).
pub fn parse_cidr(cidr: &str) -> Result<(Ipv4Addr, u8)> {
    let bad = |why: &str| Error::Network(format!("service CIDR {cidr:?}: {why}"));
    let (addr, prefix) = cidr
        .split_once('/')
        .ok_or_else(|| bad("expected a.b.c.d/prefix"))?;
    let addr: Ipv4Addr = addr.parse().map_err(|_| bad("not an IPv4 address"))?;
    let prefix: u8 = prefix.parse().map_err(|_| bad("bad prefix length"))?;
    if !(1..=32).contains(&prefix) {
        return Err(bad("prefix length must be between 1 and 32"));
    }
    if u32::from(addr) & !(u32::MAX << (32 - prefix)) != 0 {
        return Err(bad("host bits are set"));
    }
    Ok((addr, prefix))
}

/// The Service CIDRs pods route to the proxy: `flags` if given, else the IPv4 CIDRs of the
/// cluster's ServiceCIDR objects (the apiserver's `--service-cluster-ip-range` is one).
async fn service_cidrs(
    client: &Client,
    flags: &[String],
    pod_subnet: &Subnet,
) -> Result<Vec<String>> {
    let cidrs: Vec<String> = if flags.is_empty() {
        let api: Api<ServiceCIDR> = Api::all(client.clone());
        let list = api
            .list(&ListParams::default())
            .await
            .map_err(|e| Error::kube("listing ServiceCIDRs (or pass --service-cidr)", e))?;
        list.items
            .iter()
            .flat_map(|c| c.spec.iter().flat_map(|s| s.cidrs.iter().flatten()))
            .filter(|c| c.contains('.'))
            .cloned()
            .collect()
    } else {
        flags.to_vec()
    };
    if cidrs.is_empty() {
        return Err(Error::Network(
            "the cluster has no IPv4 ServiceCIDR; pass --service-cidr".into(),
        ));
    }
    for c in &cidrs {
        let (addr, prefix) = parse_cidr(c)?;
        let mask = u32::MAX << (32 - u32::from(prefix));
        let gw = u32::from(pod_subnet.gateway());
        if (gw & mask) == u32::from(addr) || pod_subnet.contains(addr) {
            return Err(Error::Network(format!(
                "service CIDR {c} overlaps the pod subnet {pod_subnet}"
            )));
        }
    }
    let mut cidrs = cidrs;
    cidrs.sort();
    cidrs.dedup();
    Ok(cidrs)
}

/// Holds an exclusive lock on the bridge for the agent's lifetime, so two agents never
/// share (and tear down) one bridge.
fn lock_bridge(bridge: &str) -> Result<(nix::fcntl::Flock<std::fs::File>, PathBuf)> {
    let dir = PathBuf::from("/run/node-agent");
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    let path = dir.join(format!("{bridge}.lock"));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    let lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| {
        Error::Network(format!(
            "bridge {bridge} is in use by another node-agent ({}: {errno}); give this agent its own --bridge and --pod-subnet",
            path.display()
        ))
    })?;
    Ok((lock, path))
}

fn watch_stream<K>(
    api: Api<K>,
    writer: reflector::store::Writer<K>,
) -> impl Stream<Item = Result<Event<K>, watcher::Error>>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    watcher(api, watcher::Config::default())
        .default_backoff()
        .modify(|o| o.managed_fields_mut().clear())
        .reflect(writer)
}

use kube::runtime::watcher::watcher;

/// Drives a watch stream into its store and pokes `triggers` on every change.
async fn drive<K: Resource>(
    stream: impl Stream<Item = Result<Event<K>, watcher::Error>>,
    triggers: Vec<Arc<Notify>>,
    what: &'static str,
    cancel: CancellationToken,
) {
    let mut stream = std::pin::pin!(stream);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            ev = stream.next() => match ev {
                Some(Ok(Event::Init | Event::InitApply(_))) => {}
                Some(Ok(ev)) => {
                    if let Event::Apply(o) | Event::Delete(o) = &ev {
                        debug!(resource = what, name = %o.name_any(), rv = ?o.resource_version(), "watch event");
                    }
                    triggers.iter().for_each(|t| t.notify_one())
                }
                Some(Err(e)) => warn!(resource = what, error = %e, "watch error (retrying)"),
                None => return,
            }
        }
    }
}

/// Keeps the service proxy in sync with Services and EndpointSlices.
#[allow(clippy::too_many_arguments)]
async fn proxy_loop(
    mut proxy: ServiceProxy,
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    trigger: Arc<Notify>,
    node_name: String,
    apiserver: SocketAddr,
    mut ready: Vec<watch::Receiver<bool>>,
    cancel: CancellationToken,
) {
    tokio::select! {
        _ = cancel.cancelled() => return,
        ok = all_ready(&mut ready) => if !ok { return },
    }
    loop {
        let desired =
            crate::services::frontends(&services.state(), &slices.state(), &node_name, apiserver);
        proxy.reconcile(desired).await;
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = trigger.notified() => {}
        }
    }
}

/// Keeps the hosts files in sync with services and pods.
async fn dns_loop(
    ctx: Arc<NodeContext>,
    services: Store<Service>,
    pods: Store<Pod>,
    trigger: Arc<Notify>,
    domain: String,
    mut ready: Vec<watch::Receiver<bool>>,
    cancel: CancellationToken,
) {
    tokio::select! {
        _ = cancel.cancelled() => return,
        ok = all_ready(&mut ready) => if !ok { return },
    }
    ctx.hosts
        .update_entries(resolve_services(&services.state(), &pods.state(), &domain));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = trigger.notified() => {}
        }
        let entries = resolve_services(&services.state(), &pods.state(), &domain);
        ctx.hosts.update_entries(entries);
    }
}

struct Workers {
    senders: HashMap<String, watch::Sender<Option<Arc<Pod>>>>,
    tasks: JoinSet<String>,
}

impl Workers {
    fn dispatch(&mut self, ctx: &Arc<NodeContext>, pod: Pod, shutdown: &CancellationToken) {
        let Some(uid) = pod.metadata.uid.clone() else {
            return;
        };
        let pod = Arc::new(pod);
        if let Some(tx) = self.senders.get(&uid) {
            let _ = tx.send(Some(pod));
            return;
        }
        if shutdown.is_cancelled() {
            return;
        }
        let (tx, rx) = watch::channel(Some(pod.clone()));
        self.senders.insert(uid.clone(), tx);
        let worker = PodWorker::new(ctx.clone(), pod, rx, shutdown.clone());
        self.tasks.spawn(async move {
            worker.run().await;
            uid
        });
    }

    fn gone(&mut self, uid: &str) {
        if let Some(tx) = self.senders.get(uid) {
            let _ = tx.send(None);
        }
    }
}

fn is_mine(pod: &Pod, node: &str) -> bool {
    pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node)
}

/// Runs the agent until `cancel` fires, then stops every pod process and cleans up.
pub async fn run(opts: AgentOptions, cancel: CancellationToken) -> Result<()> {
    std::fs::create_dir_all(opts.state_dir.join("pods")).map_err(|e| {
        Error::io(
            format!("creating {}", opts.state_dir.join("pods").display()),
            e,
        )
    })?;
    let images = match &opts.config {
        Some(path) => Config::load(path)?,
        None => Config::parse(
            &config::default_yaml(&opts.venv, &opts.dask_kube_dir),
            std::path::Path::new("<built-in>"),
        )?,
    };
    let (client, apiserver) = connect(&opts.kubeconfig).await?;
    let cidrs = service_cidrs(&client, &opts.service_cidrs, &opts.pod_subnet).await?;
    let (bridge_lock, lock_path) = lock_bridge(&opts.bridge)?;
    let network = PodNetwork {
        bridge: opts.bridge.clone(),
        subnet: opts.pod_subnet,
        tag: instance_tag(&opts.state_dir, &opts.node_name),
        service_cidrs: cidrs,
    };
    let swept = cleanup::sweep(&opts.state_dir, &network).await;
    if swept != cleanup::Swept::default() {
        warn!(
            processes = swept.processes,
            namespaces = swept.namespaces,
            "removed leftovers of a previous run"
        );
    }
    network.ensure_bridge().await?;
    let tasks_cancel = CancellationToken::new();
    let proxy = ServiceProxy::start(&network, tasks_cancel.child_token()).await?;
    let version = client
        .apiserver_version()
        .await
        .map_err(|e| Error::kube("reading the apiserver version", e))?;
    let capacity: BTreeMap<String, Quantity> = BTreeMap::from([
        ("cpu".to_string(), Quantity(opts.cpu.clone())),
        ("memory".to_string(), Quantity(opts.memory.clone())),
        ("pods".to_string(), Quantity(opts.max_pods.to_string())),
        ("ephemeral-storage".to_string(), Quantity("100Gi".into())),
    ]);
    let settings = NodeSettings {
        name: opts.node_name.clone(),
        labels: opts.labels.clone(),
        taints: opts.taints.clone(),
        capacity: capacity.clone(),
        kubelet_port: opts.kubelet_port,
        kubelet_version: version.git_version.clone(),
    };
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, opts.kubelet_port));
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        Error::io(
            format!("binding the kubelet port {addr} (another agent? use --kubelet-port)"),
            e,
        )
    })?;
    let node_obj = node::register(&client, &settings).await?;
    let node_uid = node_obj.metadata.uid.clone().unwrap_or_default();

    let pods_shutdown = CancellationToken::new();
    let registry = Arc::new(PodRegistry::default());
    let kubelet_cancel = tasks_cancel.child_token();
    let kubelet_dir: Arc<dyn kubelet_api::PodDirectory> = registry.clone();
    let kubelet = tokio::spawn(async move {
        if let Err(e) = kubelet_api::serve(listener, kubelet_dir, kubelet_cancel).await {
            error!(error = %e, "kubelet api server failed");
        }
    });
    let (pod_store, pod_writer) = reflector::store::<Pod>();
    let (node_store, node_writer) = reflector::store::<Node>();
    let (svc_store, svc_writer) = reflector::store::<Service>();
    let (slice_store, slice_writer) = reflector::store::<EndpointSlice>();
    let services_ready = readiness(svc_store.clone());
    let ctx = Arc::new(NodeContext {
        client: client.clone(),
        node_name: opts.node_name.clone(),
        host_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        state_dir: opts.state_dir.clone(),
        images,
        network: network.clone(),
        ipam: Mutex::new(Allocator::new(opts.pod_subnet)),
        watchdog: MemoryWatchdog::new(),
        registry,
        hosts: HostsManager::new(&opts.cluster_domain),
        allocatable: capacity,
        shutdown_grace: opts.shutdown_grace,
        kubelet_events: recorder(client.clone(), "kubelet", &opts.node_name),
        services: svc_store.clone(),
        services_ready: services_ready.clone(),
    });
    tokio::spawn(ctx.watchdog.clone().run(tasks_cancel.child_token()));
    tokio::spawn(node::heartbeat(
        client.clone(),
        settings.clone(),
        node_uid,
        tasks_cancel.child_token(),
    ));

    let sched_trigger = Arc::new(Notify::new());
    let dns_trigger = Arc::new(Notify::new());
    let proxy_trigger = Arc::new(Notify::new());
    tokio::spawn(drive(
        watch_stream(Api::<Node>::all(client.clone()), node_writer),
        vec![sched_trigger.clone()],
        "nodes",
        tasks_cancel.child_token(),
    ));
    tokio::spawn(drive(
        watch_stream(Api::<Service>::all(client.clone()), svc_writer),
        vec![dns_trigger.clone(), proxy_trigger.clone()],
        "services",
        tasks_cancel.child_token(),
    ));
    tokio::spawn(drive(
        watch_stream(Api::<EndpointSlice>::all(client.clone()), slice_writer),
        vec![proxy_trigger.clone()],
        "endpointslices",
        tasks_cancel.child_token(),
    ));
    let pods_ready = readiness(pod_store.clone());
    let nodes_ready = readiness(node_store.clone());
    let slices_ready = readiness(slice_store.clone());
    tokio::spawn(proxy_loop(
        proxy,
        svc_store.clone(),
        slice_store,
        proxy_trigger,
        opts.node_name.clone(),
        apiserver,
        vec![services_ready.clone(), slices_ready],
        tasks_cancel.child_token(),
    ));
    tokio::spawn(dns_loop(
        ctx.clone(),
        svc_store,
        pod_store.clone(),
        dns_trigger.clone(),
        opts.cluster_domain.clone(),
        vec![services_ready, pods_ready.clone()],
        tasks_cancel.child_token(),
    ));
    if opts.scheduler {
        let sched = Scheduler::new(
            client.clone(),
            pod_store.clone(),
            node_store,
            recorder(client.clone(), "default-scheduler", &opts.node_name),
            sched_trigger.clone(),
            vec![pods_ready, nodes_ready],
        );
        tokio::spawn(sched.run(tasks_cancel.child_token()));
    }
    info!(node = %opts.node_name, subnet = %opts.pod_subnet, bridge = %opts.bridge,
          kubelet = %addr, scheduler = opts.scheduler, "node agent running");

    let mut workers = Workers {
        senders: HashMap::new(),
        tasks: JoinSet::new(),
    };
    let pod_events = watch_stream(Api::<Pod>::all(client.clone()), pod_writer);
    let mut pod_events = std::pin::pin!(pod_events);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            Some(done) = workers.tasks.join_next() => {
                match done {
                    Ok(uid) => { workers.senders.remove(&uid); }
                    Err(e) => error!(error = %e, "pod worker panicked"),
                }
            }
            ev = pod_events.next() => {
                match ev {
                    Some(Ok(ev)) => {
                        match ev {
                            Event::Apply(pod) | Event::InitApply(pod) => {
                                if is_mine(&pod, &opts.node_name) {
                                    workers.dispatch(&ctx, pod, &pods_shutdown);
                                }
                            }
                            Event::Delete(pod) => {
                                if let Some(uid) = pod.metadata.uid.as_deref() {
                                    workers.gone(uid);
                                }
                            }
                            Event::InitDone => {
                                // A relist: pods we run that are no longer listed are gone.
                                let live: std::collections::HashSet<String> =
                                    pod_store.state().iter().filter_map(|p| p.metadata.uid.clone()).collect();
                                let stale: Vec<String> =
                                    workers.senders.keys().filter(|u| !live.contains(*u)).cloned().collect();
                                for uid in stale {
                                    workers.gone(&uid);
                                }
                            }
                            Event::Init => {}
                        }
                        sched_trigger.notify_one();
                        dns_trigger.notify_one();
                    }
                    Some(Err(e)) => warn!(error = %e, "pod watch error (retrying)"),
                    None => break,
                }
            }
        }
    }

    info!(
        pods = workers.senders.len(),
        "shutting down: stopping pod processes"
    );
    pods_shutdown.cancel();
    let deadline = opts.shutdown_grace + Duration::from_secs(15);
    let drained = tokio::time::timeout(deadline, async {
        while workers.tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!("pod workers did not finish in time; sweeping their processes");
        workers.tasks.abort_all();
    }
    if opts.delete_node_on_exit {
        delete_node_and_pods(&client, &opts.node_name).await;
    } else if let Err(e) = node::report_status(&client, &settings, false).await {
        warn!(error = %e, "could not mark the node NotReady");
    }
    tasks_cancel.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), kubelet).await;
    let swept = cleanup::sweep(&opts.state_dir, &network).await;
    debug!(
        processes = swept.processes,
        namespaces = swept.namespaces,
        "final sweep"
    );
    network.remove_bridge().await;
    // Unlink while still holding the lock, so no other agent locks a file that is going away.
    let _ = std::fs::remove_file(&lock_path);
    drop(bridge_lock);
    info!("node agent stopped");
    Ok(())
}

/// What pod GC does for a node that is gone: its pods are force-deleted; then the Node.
async fn delete_node_and_pods(client: &Client, node: &str) {
    let pods: Api<Pod> = Api::all(client.clone());
    let lp = ListParams::default().fields(&format!("spec.nodeName={node}"));
    match pods.list(&lp).await {
        Ok(list) => {
            for p in list {
                let (Some(ns), name) = (p.metadata.namespace.clone(), p.name_any()) else {
                    continue;
                };
                let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
                let dp = DeleteParams {
                    grace_period_seconds: Some(0),
                    ..Default::default()
                };
                if let Err(e) = api.delete(&name, &dp).await {
                    debug!(pod = %format!("{ns}/{name}"), error = %e, "force delete failed");
                }
            }
        }
        Err(e) => warn!(error = %e, "could not list pods of the node"),
    }
    let nodes: Api<Node> = Api::all(client.clone());
    match nodes.delete(node, &DeleteParams::default()).await {
        Ok(_) => info!(%node, "node deleted"),
        Err(e) => warn!(%node, error = %e, "could not delete node"),
    }
}
