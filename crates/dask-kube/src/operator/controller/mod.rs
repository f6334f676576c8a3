//! The controllers: kube-runtime's `Controller` over DaskCluster, DaskWorkerGroup,
//! DaskAutoscaler and DaskJob, fed by shared reflectors of what they own. Each reconcile
//! reads the stores, asks the pure planner of [`crate::operator::reconcile`], and [`crate::operator::apply`]s
//! the plan.

use crate::operator::apply::{StatusWrite, apply, publish};
use crate::operator::context::{Context, SchedulerAccess, Scope, Stores};
use crate::operator::names::{
    self, CLUSTER_LABEL, COMPONENT_LABEL, JOB_RUNNER_COMPONENT, SCHEDULER_COMPONENT,
    WORKER_COMPONENT, WORKER_GROUP_LABEL,
};
use crate::operator::reconcile::{
    AutoscalerView, ClusterView, JobView, Note, Plan, ServiceState, WorkerGroupView, idle_expired,
    plan_autoscaler, plan_cluster, plan_job, plan_worker_group, scheduler_needed, target_group,
};
use crate::operator::resources::{DaskAutoscaler, DaskCluster, DaskJob, DaskWorkerGroup};
use crate::{CreateLimits, KubeConnection, SchedulerApi, SchedulerWorker, WorkerPodState};
use crate::{Error, Result};
use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::{PartialObjectMeta, PartialObjectMetaExt};
use kube::runtime::controller::{Action as Requeue, Controller};
use kube::runtime::reflector::{self, ObjectRef, ReflectHandle, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tracing::{debug, warn};

/// Wait before retrying a reconcile that failed.
pub const RETRY_AFTER_ERROR: Duration = Duration::from_secs(10);
/// What the operator logs once every watch has listed and the controllers run (a process
/// that starts it waits for this line).
pub const READY_LINE: &str = "dask-kube-operator ready";
/// Events a shared reflector buffers per subscriber. Each trigger channel allocates its
/// slots up front (about 440 bytes each: 442 KB per channel at 1,024, 2.2 MB of an idle
/// operator's heap for five); a subscriber that falls further behind loses nothing, it
/// reconciles every owner instead ([`touches_of`]).
const SUBSCRIBER_BUFFER: usize = 256;

/// How the operator runs.
#[derive(Debug, Clone)]
pub struct OperatorOptions {
    /// The namespaces it serves.
    pub scope: Scope,
    /// How it reaches schedulers.
    pub scheduler_access: SchedulerAccess,
    /// Its name in events (`reportingController`).
    pub reporter: String,
    /// How many pod creations and deletions may be in flight (under one flow control for
    /// every reconcile).
    pub limits: CreateLimits,
    /// Worker pods of a group starting at once (or half its connected workers, if more)
    /// beyond which pods that replace ended workers are created holding a scheduling gate
    /// ([`crate::start_room`], default [`crate::DEFAULT_START_WINDOW`]).
    pub start_window: usize,
}

type Shared<K> = (Store<K>, ReflectHandle<K>);

/// What a store keeps of an object: everything but `metadata.managedFields`, which no
/// reconcile reads and which is, parsed, the larger part of a pod the kubelet and the
/// scheduler have written to (kube-rs' documented pruning for reflectors). With 1,000 worker
/// pods in the store this is most of the operator's memory.
fn prune<K: Resource>(object: &mut K) {
    object.meta_mut().managed_fields = None;
}

/// What the pod store keeps of a pod: [`prune`], and of its `spec` only the scheduling
/// gates (the start window reads them). Reconciles read a pod's metadata and status
/// otherwise (its phase, containers' states, IPs, readiness: what `WorkerPodState` and the
/// scheduler's readiness are made of); the rest of the spec, the worker template with its
/// containers, args, env, resources, tolerations and affinity, is the larger part of what
/// is left, and 1,000 Pending pods are 1,000 copies of it. The pod watch parses only this
/// ([`watched_pod::WatchedPod`]); this function is what its tests compare it with.
#[cfg(test)]
fn prune_pod(pod: &mut Pod) {
    prune(pod);
    pod.spec = pod
        .spec
        .take()
        .and_then(|s| s.scheduling_gates)
        .map(|gates| k8s_openapi::api::core::v1::PodSpec {
            scheduling_gates: Some(gates),
            ..Default::default()
        });
}

/// Starts a shared reflector of `api`; returns its store and a subscription, what it
/// touched ([`announced`]), and the future that drives it.
fn shared<K>(
    api: Api<K>,
    config: watcher::Config,
) -> (
    Shared<K>,
    Touches<K>,
    impl std::future::Future<Output = ()> + Send,
)
where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store_shared(SUBSCRIBER_BUFFER);
    let subscriber = writer
        .subscribe()
        .unwrap_or_else(|| unreachable!("a shared store always subscribes"));
    let (touches, drive) = announced(
        watcher(api, config)
            .default_backoff()
            .modify(prune::<K>)
            .reflect_shared(writer),
    );
    ((reader, subscriber), touches, drive)
}

/// Every change and deletion a reflector applied, as metadata, sent after its store has it.
type Touches<K> = tokio::sync::broadcast::Sender<PartialObjectMeta<K>>;

/// Starts a reflector of `api`; returns its store, what it touched ([`announced`]), and the
/// future that drives it.
fn reflected<K>(
    api: Api<K>,
    config: watcher::Config,
) -> (
    Store<K>,
    Touches<K>,
    impl std::future::Future<Output = ()> + Send,
)
where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let (touches, drive) = announced(
        watcher(api, config)
            .default_backoff()
            .modify(prune::<K>)
            .reflect(writer),
    );
    (reader, touches, drive)
}

/// [`reflected`] for pods, each read as only what the store keeps ([`watched_pod`]).
fn reflected_pods(
    api: Api<watched_pod::WatchedPod>,
    config: watcher::Config,
) -> (
    Store<Pod>,
    Touches<Pod>,
    impl std::future::Future<Output = ()> + Send,
) {
    use futures::TryStreamExt;
    let (reader, writer) = reflector::store();
    let (touches, drive) = announced(
        watcher(api, config)
            .default_backoff()
            .map_ok(watched_pod::WatchedPod::into_pod_event)
            .reflect(writer),
    );
    (reader, touches, drive)
}

/// The objects a reflector's stream touched (changed or deleted), sent once its store has
/// applied them, and the future that drives the stream.
///
/// Controllers are triggered from here, never from a watch of their own: a second watch can
/// deliver a change before the store has it, and the reconcile then reads the old state,
/// plans nothing and waits for a change that already happened (a worker pod that failed,
/// seen as still running, was never replaced). kube-runtime's shared subscriptions would
/// not do either: they carry changes but no deletions.
fn announced<K, S>(reflector: S) -> (Touches<K>, impl std::future::Future<Output = ()> + Send)
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
    S: Stream<Item = std::result::Result<watcher::Event<K>, watcher::Error>> + Send,
{
    let (touches, _) = tokio::sync::broadcast::channel(SUBSCRIBER_BUFFER);
    let sender = touches.clone();
    let drive = reflector.touched_objects().for_each(move |object| {
        match object {
            // No subscriber yet (the controllers start once every store listed): nothing
            // to trigger, the start reconciles everything.
            Ok(object) => drop(sender.send(object.meta().clone().into_request_partial::<K>())),
            Err(e) => warn!(kind = %K::kind(&()), error = %e, "watch failed; retrying"),
        }
        futures::future::ready(())
    });
    (touches, drive)
}

/// Whether an object's `dask.org/component` is `component`.
fn component_is(meta: &ObjectMeta, component: &str) -> bool {
    meta.labels
        .as_ref()
        .and_then(|l| l.get(COMPONENT_LABEL))
        .is_some_and(|c| c == component)
}

/// A Dask worker pod (`dask.org/component=worker`).
fn is_worker(meta: &ObjectMeta) -> bool {
    component_is(meta, WORKER_COMPONENT)
}

/// A DaskJob's runner pod (`dask.org/component=job-runner`).
fn is_job_runner(meta: &ObjectMeta) -> bool {
    component_is(meta, JOB_RUNNER_COMPONENT)
}

/// A controller's trigger stream: the objects of `touches` that `keep` selects. A subscriber
/// that fell behind by more than the buffer gets every object of `store` instead of the
/// changes it missed, so no change goes unreconciled.
fn touches_of<K>(
    touches: &Touches<K>,
    store: Store<K>,
    keep: fn(&ObjectMeta) -> bool,
) -> impl Stream<Item = std::result::Result<PartialObjectMeta<K>, watcher::Error>> + Send + 'static
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    use tokio::sync::broadcast::error::RecvError;
    let receiver = touches.subscribe();
    let pending: std::collections::VecDeque<PartialObjectMeta<K>> = Default::default();
    futures::stream::unfold(
        (receiver, store, pending),
        move |(mut receiver, store, mut pending)| async move {
            loop {
                if let Some(object) = pending.pop_front() {
                    return Some((Ok(object), (receiver, store, pending)));
                }
                match receiver.recv().await {
                    Ok(object) if keep(&object.metadata) => {
                        return Some((Ok(object), (receiver, store, pending)));
                    }
                    Ok(_) => {}
                    Err(RecvError::Lagged(missed)) => {
                        warn!(kind = %K::kind(&()), missed, "trigger stream fell behind; reconciling every owner");
                        pending.extend(
                            store
                                .state()
                                .iter()
                                .filter(|o| keep(o.meta()))
                                .map(|o| o.meta().clone().into_request_partial::<K>()),
                        );
                    }
                    Err(RecvError::Closed) => return None,
                }
            }
        },
    )
}

/// Runs the operator until the process is asked to stop.
///
/// # Errors
/// The watches never became ready (no permission to list, CRDs not installed).
pub async fn run(connection: KubeConnection, options: OperatorOptions) -> Result<()> {
    let OperatorOptions {
        scope,
        scheduler_access,
        reporter,
        limits,
        start_window,
    } = options;
    let client = connection.client.clone();
    let labelled = |selector: &str| watcher::Config::default().labels(selector);
    let ((clusters, cluster_events), cluster_touches, drive_clusters) = shared(
        scope.api::<DaskCluster>(&client),
        watcher::Config::default(),
    );
    let ((groups, group_events), group_touches, drive_groups) = shared(
        scope.api::<DaskWorkerGroup>(&client),
        watcher::Config::default(),
    );
    let (pods, pod_touches, drive_pods) =
        reflected_pods(scope.api(&client), labelled(CLUSTER_LABEL));
    let scheduler_selector = format!("{COMPONENT_LABEL}={SCHEDULER_COMPONENT}");
    let (deployments, deployment_touches, drive_deployments) = reflected(
        scope.api::<Deployment>(&client),
        labelled(&scheduler_selector),
    );
    let (services, service_touches, drive_services) =
        reflected(scope.api::<Service>(&client), labelled(&scheduler_selector));
    let drive = futures::future::join5(
        drive_clusters,
        drive_groups,
        drive_pods,
        drive_deployments,
        drive_services,
    );
    let stores = Stores {
        clusters: clusters.clone(),
        groups: groups.clone(),
        pods: pods.clone(),
        deployments,
        services,
    };
    let mut ctx = Context::new(
        connection,
        limits,
        stores.clone(),
        scheduler_access,
        reporter,
    );
    ctx.start_window = start_window;
    let ctx = Arc::new(ctx);

    let controllers = async {
        // A reconcile that reads an empty store would create what exists (duplicate
        // workers): start once every store has listed.
        let ready = async {
            tokio::try_join!(
                stores.clusters.wait_until_ready(),
                stores.groups.wait_until_ready(),
                stores.pods.wait_until_ready(),
                stores.deployments.wait_until_ready(),
                stores.services.wait_until_ready(),
            )
        };
        if ready.await.is_err() {
            return Err(Error::OperatorWatchesNotReady);
        }
        tracing::info!(
            ?scope,
            "{READY_LINE}: every watch listed, controllers running"
        );
        let groups_of_cluster = {
            let groups = groups.clone();
            move |cluster: Arc<DaskCluster>| {
                let (name, ns) = (cluster.name_any(), cluster.namespace());
                groups
                    .state()
                    .into_iter()
                    .filter(|g| g.spec.cluster == name && g.namespace() == ns)
                    .map(|g| ObjectRef::from_obj(&*g))
                    .collect::<Vec<_>>()
            }
        };
        // Owned objects trigger their owner, deletions too, from the reflector that fills
        // the store the owner's reconcile reads (`announced`): a worker pod, a scheduler
        // Deployment or a job's cluster deleted by anyone is noticed (upstream's kopf
        // operator misses them, dask-kubernetes #603).
        let cluster_controller =
            Controller::for_shared_stream(cluster_events.clone(), clusters.clone())
                .owns_stream(touches_of(
                    &deployment_touches,
                    stores.deployments.clone(),
                    |_| true,
                ))
                .owns_stream(touches_of(
                    &service_touches,
                    stores.services.clone(),
                    |_| true,
                ))
                .owns_stream(touches_of(&group_touches, groups.clone(), |_| true))
                .shutdown_on_signal()
                .run(reconcile_cluster, retry, ctx.clone());
        let group_controller = Controller::for_shared_stream(group_events.clone(), groups.clone())
            .owns_stream(touches_of(&pod_touches, stores.pods.clone(), is_worker))
            .watches_shared_stream(cluster_events.clone(), groups_of_cluster)
            .shutdown_on_signal()
            .run(reconcile_worker_group, retry, ctx.clone());
        let autoscaler_controller = Controller::new(
            scope.api::<DaskAutoscaler>(&client),
            watcher::Config::default(),
        )
        .shutdown_on_signal()
        .run(reconcile_autoscaler, retry, ctx.clone());
        let job_controller =
            Controller::new(scope.api::<DaskJob>(&client), watcher::Config::default())
                .owns_stream(touches_of(&pod_touches, stores.pods.clone(), is_job_runner))
                .owns_stream(touches_of(&cluster_touches, clusters.clone(), |_| true))
                .shutdown_on_signal()
                .run(reconcile_job, retry, ctx.clone());
        futures::future::join4(
            log_results(cluster_controller),
            log_results(group_controller),
            log_results(autoscaler_controller),
            log_results(job_controller),
        )
        .await;
        Ok(())
    };
    tokio::select! {
        result = controllers => result,
        _ = drive => Ok(()),
    }
}

async fn log_results<K: Resource, E: std::fmt::Display, S>(results: S)
where
    S: Stream<Item = std::result::Result<(ObjectRef<K>, Requeue), E>>,
    K::DynamicType: Debug + Eq + Hash + Clone,
{
    results
        .for_each(|r| async move {
            if let Err(e) = r {
                debug!(error = %e, "reconcile failed");
            }
        })
        .await;
}

fn retry<K>(_object: Arc<K>, _error: &Error, _ctx: Arc<Context>) -> Requeue {
    Requeue::requeue(RETRY_AFTER_ERROR)
}

fn requeue(plan: &Plan) -> Requeue {
    match plan.requeue_after {
        Some(after) => Requeue::requeue(after),
        None => Requeue::await_change(),
    }
}

/// Reports a failed reconcile as a Warning event on the object (what kopf's "Handler ...
/// failed" events tell), then returns the error for the retry.
async fn reported<K: Resource<DynamicType = ()>, T>(
    ctx: &Context,
    object: &K,
    result: Result<T>,
) -> Result<T> {
    if let Err(e) = &result {
        publish(
            ctx,
            object,
            &Note {
                warning: true,
                message: e.to_string(),
            },
        )
        .await;
    }
    result
}

fn namespace_of<K: Resource>(object: &K) -> String {
    object.meta().namespace.clone().unwrap_or_default()
}

/// Reconciles a DaskCluster: its parts and phase, and the idle timeout.
pub async fn reconcile_cluster(cluster: Arc<DaskCluster>, ctx: Arc<Context>) -> Result<Requeue> {
    let ns = namespace_of(&*cluster);
    let name = cluster.name_any();
    let scheduler = names::scheduler_name(&name);
    let stores = &ctx.stores;
    let scheduler_deployment = stores
        .deployments
        .get(&ObjectRef::new(&scheduler).within(&ns))
        .is_some();
    let service = stores
        .services
        .get(&ObjectRef::new(&scheduler).within(&ns))
        .map(|s| ServiceState {
            load_balancer: s.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("LoadBalancer"),
            has_ingress: s
                .status
                .as_ref()
                .and_then(|s| s.load_balancer.as_ref())
                .and_then(|l| l.ingress.as_ref())
                .is_some_and(|i| !i.is_empty()),
        });
    let default_group = stores
        .groups
        .get(&ObjectRef::new(&names::default_worker_group_name(&name)).within(&ns));
    let plan = plan_cluster(ClusterView {
        cluster: &cluster,
        scheduler_deployment,
        service,
        default_group: default_group.as_deref(),
    });
    let plan = reported(&ctx, &*cluster, plan).await?;
    reported(
        &ctx,
        &*cluster,
        apply(&ctx, &*cluster, &plan, StatusWrite::Object).await,
    )
    .await?;

    let running = cluster.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
    if cluster.spec.idle_timeout > 0 && running {
        check_idle(&ctx, &cluster).await;
    }
    Ok(requeue(&plan))
}

async fn check_idle(ctx: &Context, cluster: &DaskCluster) {
    let ns = namespace_of(cluster);
    let name = cluster.name_any();
    let Some(scheduler) = ctx.scheduler(&ns, &name) else {
        return;
    };
    match scheduler.idle_since().await {
        Ok(since) => {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or_default();
            if idle_expired(cluster.spec.idle_timeout, since, now) {
                let note = format!(
                    "Scheduler idle for longer than {} seconds, deleting DaskCluster {name}.",
                    cluster.spec.idle_timeout
                );
                publish(
                    ctx,
                    cluster,
                    &Note {
                        warning: false,
                        message: note,
                    },
                )
                .await;
                let clusters: Api<DaskCluster> = Api::namespaced(ctx.client.clone(), &ns);
                if let Err(e) = clusters.delete(&name, &Default::default()).await {
                    warn!(namespace = %ns, cluster = %name, error = %e, "cannot delete the idle cluster");
                }
            }
        }
        // Upstream: "Unable to connect to scheduler, skipping autoshutdown check."
        Err(e) => debug!(namespace = %ns, cluster = %name, error = %e, "skipping the idle check"),
    }
}

/// Reconciles a DaskWorkerGroup: its worker pods.
pub async fn reconcile_worker_group(
    group: Arc<DaskWorkerGroup>,
    ctx: Arc<Context>,
) -> Result<Requeue> {
    let ns = namespace_of(&*group);
    let name = group.name_any();
    let group_ref = ObjectRef::from_obj(&*group);
    if group.meta().deletion_timestamp.is_some() {
        ctx.forget_group(&group_ref);
        return Ok(Requeue::await_change());
    }
    let cluster = ctx
        .stores
        .clusters
        .get(&ObjectRef::new(&group.spec.cluster).within(&ns));
    let observed = ctx
        .stores
        .pods_labelled(&ns, &[(WORKER_GROUP_LABEL, &name)]);
    let pods = match crate::operator::manifests::owner_ref(&*group) {
        Ok(owner) => ctx.with_expectations(&group_ref, |e| {
            e.reconcile_view(observed, &owner, std::time::Instant::now())
        }),
        Err(_) => observed,
    };
    let other_pods: Vec<Arc<Pod>> = ctx
        .stores
        .pods_labelled(
            &ns,
            &[
                (CLUSTER_LABEL, &group.spec.cluster),
                (COMPONENT_LABEL, WORKER_COMPONENT),
            ],
        )
        .into_iter()
        .filter(|p| p.labels().get(WORKER_GROUP_LABEL) != Some(&name))
        .collect();
    let scheduler_ready = ctx
        .stores
        .scheduler_pod(&ns, &group.spec.cluster)
        .is_some_and(|(_, ready)| ready);
    let workers: Option<Vec<SchedulerWorker>> = if scheduler_needed(&group, &pods, scheduler_ready)
    {
        scheduler_workers(&ctx, &ns, &group.spec.cluster).await
    } else {
        None
    };
    let mut suffix = || uuid::Uuid::new_v4().simple().to_string()[..10].to_owned();
    let plan = plan_worker_group(
        WorkerGroupView {
            group: &group,
            cluster: cluster.as_deref(),
            pods: &pods,
            other_pods: &other_pods,
            scheduler_workers: workers.as_deref(),
            scheduler_ready,
            start_window: ctx.start_window,
        },
        &mut suffix,
    );
    let plan = reported(&ctx, &*group, plan).await?;
    reported(
        &ctx,
        &*group,
        apply(&ctx, &*group, &plan, StatusWrite::Object).await,
    )
    .await?;
    // An expectation the watch never confirms expires; look again then, even if no event
    // comes.
    if plan.requeue_after.is_none() && ctx.with_expectations(&group_ref, |e| e.outstanding()) {
        return Ok(Requeue::requeue(crate::operator::reconcile::TIMER_PERIOD));
    }
    Ok(requeue(&plan))
}

async fn scheduler_workers(ctx: &Context, ns: &str, cluster: &str) -> Option<Vec<SchedulerWorker>> {
    let scheduler = ctx.scheduler(ns, cluster)?;
    match scheduler.workers().await {
        Ok(workers) => Some(workers),
        Err(e) => {
            warn!(namespace = %ns, %cluster, error = %e, "cannot list the scheduler's workers; removing only pods that never started");
            None
        }
    }
}

/// Reconciles a DaskAutoscaler: one poll of the scheduler's target.
pub async fn reconcile_autoscaler(
    autoscaler: Arc<DaskAutoscaler>,
    ctx: Arc<Context>,
) -> Result<Requeue> {
    let ns = namespace_of(&*autoscaler);
    let cluster_name = autoscaler.spec.cluster.clone();
    let autoscaler_ref = ObjectRef::from_obj(&*autoscaler);
    if autoscaler.meta().deletion_timestamp.is_some() {
        ctx.forget_autoscaler(&autoscaler_ref);
        return Ok(Requeue::await_change());
    }
    let stores = &ctx.stores;
    let cluster = stores
        .clusters
        .get(&ObjectRef::new(&cluster_name).within(&ns));
    let group_name = target_group(&autoscaler);
    let group = stores.groups.get(&ObjectRef::new(&group_name).within(&ns));
    let workers = stores.pods_labelled(
        &ns,
        &[
            (CLUSTER_LABEL, &cluster_name),
            (COMPONENT_LABEL, WORKER_COMPONENT),
        ],
    );
    let (group_pods, others): (Vec<Arc<Pod>>, Vec<Arc<Pod>>) = workers
        .into_iter()
        .partition(|p| p.labels().get(WORKER_GROUP_LABEL) == Some(&group_name));
    let other_workers = others
        .iter()
        .filter(|p| WorkerPodState::from_pod(p).active())
        .count();
    let scheduler_ready = stores
        .scheduler_pod(&ns, &cluster_name)
        .is_some_and(|(_, ready)| ready);
    let target = match (scheduler_ready, ctx.scheduler(&ns, &cluster_name)) {
        (true, Some(scheduler)) => match scheduler.adaptive_target().await {
            Ok(t) => Some(t),
            Err(e) => {
                warn!(namespace = %ns, cluster = %cluster_name, error = %e, "Unable to get desired number of workers from scheduler.");
                None
            }
        },
        _ => None,
    };
    let now = ctx.started.elapsed();
    let plan = ctx.with_adapt_memory(&autoscaler_ref, |memory| {
        plan_autoscaler(
            AutoscalerView {
                autoscaler: &autoscaler,
                cluster: cluster.as_deref(),
                group: group.as_deref(),
                group_pods: &group_pods,
                other_workers: u32::try_from(other_workers).unwrap_or(u32::MAX),
                scheduler_ready,
                target,
            },
            memory,
            now,
        )
    });
    let plan = reported(&ctx, &*autoscaler, plan).await?;
    reported(
        &ctx,
        &*autoscaler,
        apply(&ctx, &*autoscaler, &plan, StatusWrite::Object).await,
    )
    .await?;
    Ok(requeue(&plan))
}

/// Reconciles a DaskJob: its cluster, runner pod and status.
pub async fn reconcile_job(job: Arc<DaskJob>, ctx: Arc<Context>) -> Result<Requeue> {
    let ns = namespace_of(&*job);
    let name = job.name_any();
    let cluster_exists = ctx
        .stores
        .clusters
        .get(&ObjectRef::new(&name).within(&ns))
        .is_some();
    let runner_name = names::job_runner_pod_name(&name);
    let runner = ctx
        .stores
        .pods
        .get(&ObjectRef::new(&runner_name).within(&ns));
    let now = k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let plan = plan_job(
        JobView {
            job: &job,
            cluster_exists,
            runner: runner.as_deref(),
        },
        &now,
    );
    let plan = reported(&ctx, &*job, plan).await?;
    reported(
        &ctx,
        &*job,
        apply(&ctx, &*job, &plan, StatusWrite::Subresource).await,
    )
    .await?;
    Ok(requeue(&plan))
}

mod watched_pod;

#[cfg(test)]
mod tests;
