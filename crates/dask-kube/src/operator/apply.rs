//! Carries out a [`Plan`] against the API server and the scheduler: the only place the
//! planners' decisions turn into calls.

use crate::operator::context::Context;
use crate::operator::manifests;
use crate::operator::names::WORKER_GROUP_LABEL;
use crate::operator::reconcile::{Action, Note, Plan};
use crate::operator::resources::{DaskCluster, DaskWorkerGroup};
use crate::{
    BatchReport, Error, Result, RetireTarget, SchedulerApi, WorkerPodState, retired_pods_to_delete,
};
use k8s_openapi::api::core::v1::{Event as CoreEvent, Pod};
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::collections::BTreeSet;
use std::fmt::Debug;
use std::time::Instant;
use tracing::{info, warn};

/// The field manager of every write.
pub const FIELD_MANAGER: &str = "dask-kube-operator";
/// Event reason of every note: upstream's kopf posts its handlers' log lines as `Logging`.
pub const EVENT_REASON: &str = "Logging";

/// How the reconciled object's status is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusWrite {
    /// An ordinary patch of the object (its CRD has no status subresource).
    Object,
    /// A patch of the `/status` subresource.
    Subresource,
}

/// Carries out `plan` for `object`, in order. A create of something that exists and a
/// delete of something gone count as done; pod creations and deletions of one plan run
/// concurrently under the shared flow control, every one to its end (a call dropped in
/// flight would leave its outcome unknown), and the first failure is returned.
///
/// # Errors
/// The first call that failed, naming the object.
pub async fn apply<K>(ctx: &Context, object: &K, plan: &Plan, status: StatusWrite) -> Result<()>
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + Debug
        + DeserializeOwned
        + serde::Serialize,
{
    let namespace = object.namespace().unwrap_or_default();
    let name = object.name_any();
    let own: Api<K> = Api::namespaced(ctx.client.clone(), &namespace);
    let mut pods_to_create = Vec::new();
    let mut worker_pods = Vec::new();
    let mut pods_to_delete = Vec::new();
    let mut pods_to_release = Vec::new();
    for action in &plan.actions {
        match action {
            Action::ReleasePod { pod, patch } => pods_to_release.push((pod.as_str(), patch)),
            Action::Create(manifest) if manifest["kind"] == "Pod" => {
                pods_to_create.push(manifests::typed(manifest.clone())?);
            }
            Action::CreateWorkerPods(pods) => worker_pods.push(pods.as_ref()),
            Action::DeletePod {
                pod,
                unchanged_since,
            } => pods_to_delete.push((pod.clone(), unchanged_since.clone())),
            _ => {}
        }
    }
    release_pods(ctx, object, &namespace, &pods_to_release).await?;
    // Worker pods are rendered one at a time as the batch takes them.
    let rendered = manifests::RenderedPods::new(worker_pods);
    create_pods(
        ctx,
        object,
        &namespace,
        pods_to_create.into_iter().chain(rendered),
    )
    .await?;
    delete_pods(ctx, object, &namespace, &pods_to_delete).await?;
    for action in &plan.actions {
        match action {
            Action::Create(manifest) if manifest["kind"] != "Pod" => {
                create(ctx, &namespace, manifest).await?;
            }
            Action::Create(_)
            | Action::CreateWorkerPods(_)
            | Action::DeletePod { .. }
            | Action::ReleasePod { .. } => {}
            Action::DeleteCluster(cluster) => {
                let clusters: Api<DaskCluster> = Api::namespaced(ctx.client.clone(), &namespace);
                match clusters.delete(cluster, &DeleteParams::default()).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(e) => {
                        return Err(api_error("delete", "DaskCluster", &namespace, cluster, e));
                    }
                }
            }
            Action::PatchStatus(patch) => {
                let params = PatchParams::default();
                let result = match status {
                    StatusWrite::Object => own.patch(&name, &params, &Patch::Merge(patch)).await,
                    StatusWrite::Subresource => {
                        own.patch_status(&name, &params, &Patch::Merge(patch)).await
                    }
                };
                result.map_err(|e| {
                    api_error("patch status of", &K::kind(&()), &namespace, &name, e)
                })?;
            }
            Action::PatchSelf(patch) => {
                own.patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                    .await
                    .map_err(|e| api_error("patch", &K::kind(&()), &namespace, &name, e))?;
            }
            Action::PatchWorkerGroup { name: group, patch } => {
                let groups: Api<DaskWorkerGroup> = Api::namespaced(ctx.client.clone(), &namespace);
                groups
                    .patch(group, &PatchParams::default(), &Patch::Merge(patch))
                    .await
                    .map_err(|e| api_error("patch", "DaskWorkerGroup", &namespace, group, e))?;
            }
            Action::RetireThenDelete {
                cluster,
                group,
                targets,
            } => {
                retire_then_delete(ctx, object, &namespace, cluster, group, targets).await?;
            }
            Action::Note(note) => publish(ctx, object, note).await,
        }
    }
    Ok(())
}

/// Calls in flight while releasing gated pods.
const RELEASES_IN_FLIGHT: usize = 16;

/// Removes the start gate from these pods, a few calls at a time. A pod gone (404) or whose
/// gates changed since it was listed (the patch's test fails: 422) is left for the next look.
async fn release_pods<K: Resource<DynamicType = ()>>(
    ctx: &Context,
    owner: &K,
    namespace: &str,
    pods: &[(&str, &Value)],
) -> Result<()> {
    use futures::StreamExt;
    if pods.is_empty() {
        return Ok(());
    }
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let calls: Vec<_> = pods
        .iter()
        .map(|&(pod, patch)| release_pod(api.clone(), pod.to_owned(), patch.clone()))
        .collect();
    let results: Vec<Result<Option<String>>> = futures::stream::iter(calls)
        .buffer_unordered(RELEASES_IN_FLIGHT)
        .collect()
        .await;
    let released: Vec<&String> = results.iter().flatten().flatten().collect();
    if let Some(group) = group_ref(owner) {
        let now = Instant::now();
        ctx.with_expectations(&group, |e| {
            for name in &released {
                e.released(name, now);
            }
        });
    }
    info!(%namespace, pods = released.len(), "released start gates");
    results
        .into_iter()
        .find_map(Result::err)
        .map_or(Ok(()), Err)
}

/// Removes the start gate from one pod: its name when done, `None` when left for later.
async fn release_pod(api: Api<Pod>, pod: String, patch: Value) -> Result<Option<String>> {
    let namespace = api.namespace().unwrap_or_default().to_owned();
    let patch: json_patch::Patch = serde_json::from_value(patch).map_err(|e| Error::Render {
        what: "start gate patch",
        reason: e.to_string(),
    })?;
    match api
        .patch(&pod, &PatchParams::default(), &Patch::Json::<()>(patch))
        .await
    {
        Ok(_) => Ok(Some(pod)),
        Err(kube::Error::Api(s)) if matches!(s.code, 404 | 409 | 422) => {
            info!(%namespace, %pod, reason = %s.message, "start gate not released: the pod is gone or changed");
            Ok(None)
        }
        Err(e) => Err(api_error(
            "release the start gate of",
            "Pod",
            &namespace,
            &pod,
            e,
        )),
    }
}

fn api_error(action: &str, kind: &str, namespace: &str, name: &str, source: kube::Error) -> Error {
    // The apiserver's own sentence (`pods is forbidden: User ... cannot create resource
    // "pods" ...`), not kube's debug dump of the whole Status.
    let reason = match &source {
        kube::Error::Api(status) => status.message.clone(),
        other => other.to_string(),
    };
    Error::Api {
        action: format!("{action} {kind} {namespace}/{name}"),
        reason,
        source: Box::new(source),
    }
}

/// Posts a note as an Event on `object`, as kopf posts a handler's log line (a core/v1
/// Event, reason `Logging`, one per line: no aggregation that would keep an older message
/// under a newer count), and logs it (upstream's tests read the operator's log for these
/// lines). A failed post is logged, not fatal: events are best effort.
pub async fn publish<K: Resource<DynamicType = ()>>(ctx: &Context, object: &K, note: &Note) {
    let kind = K::kind(&());
    let namespace = object.namespace().unwrap_or_default();
    let name = object.name_any();
    if note.warning {
        warn!(%kind, %namespace, %name, "{}", note.message);
    } else {
        info!(%kind, %namespace, %name, "{}", note.message);
    }
    let now = k8s_openapi::jiff::Timestamp::now();
    let event = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": format!("{name}."), "namespace": namespace},
        "involvedObject": object.object_ref(&()),
        "type": if note.warning { "Warning" } else { "Normal" },
        "reason": EVENT_REASON,
        "message": note.message.chars().take(MAX_EVENT_MESSAGE).collect::<String>(),
        "source": {"component": ctx.reporter},
        "reportingComponent": ctx.reporter,
        "reportingInstance": ctx.reporter_instance,
        "action": "Reconcile",
        "firstTimestamp": now.to_string(),
        "lastTimestamp": now.to_string(),
        "count": 1,
    });
    let posted = match serde_json::from_value::<CoreEvent>(event) {
        Ok(event) => {
            let events: Api<CoreEvent> = Api::namespaced(ctx.client.clone(), &namespace);
            events
                .create(&PostParams::default(), &event)
                .await
                .err()
                .map(|e| e.to_string())
        }
        Err(e) => Some(e.to_string()),
    };
    if let Some(error) = posted {
        warn!(%kind, %namespace, %name, %error, "cannot post an event");
    }
}

/// Longest event message (kopf cuts at 1024 too).
const MAX_EVENT_MESSAGE: usize = 1024;

fn api_resource(manifest: &Value) -> Result<ApiResource> {
    let (api_version, kind) = match (manifest["apiVersion"].as_str(), manifest["kind"].as_str()) {
        (Some(a), Some(k)) => (a, k),
        _ => {
            return Err(Error::Render {
                what: "object",
                reason: "no apiVersion or kind".into(),
            });
        }
    };
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    Ok(ApiResource::from_gvk(&GroupVersionKind::gvk(
        group, version, kind,
    )))
}

async fn create(ctx: &Context, namespace: &str, manifest: &Value) -> Result<()> {
    let resource = api_resource(manifest)?;
    let object: DynamicObject =
        serde_json::from_value(manifest.clone()).map_err(|e| Error::Render {
            what: "object",
            reason: e.to_string(),
        })?;
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), namespace, &resource);
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PostParams::default()
    };
    match api.create(&params, &object).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(api_error(
            "create",
            &resource.kind,
            namespace,
            &object.name_any(),
            e,
        )),
    }
}

fn group_ref<K: Resource<DynamicType = ()>>(object: &K) -> Option<ObjectRef<DaskWorkerGroup>> {
    (K::kind(&()) == "DaskWorkerGroup")
        .then(|| ObjectRef::new(&object.name_any()).within(&object.namespace().unwrap_or_default()))
}

/// What a batch did as this operator reports it: the API server's refusal that stopped it,
/// else every failure.
fn batch_result(what: String, report: BatchReport, stopped: Option<Error>) -> Result<()> {
    match stopped {
        Some(e) => Err(e),
        None => report.into_result(&what).map(|_| ()),
    }
}

/// Creates the plan's pods with the library's batch (under the shared flow control; a
/// create whose answer was lost is looked up, never sent twice) and records the pods it
/// made in the group's expectations, so a reconcile before the watch shows them does not
/// make them again.
async fn create_pods<K: Resource<DynamicType = ()>>(
    ctx: &Context,
    owner: &K,
    namespace: &str,
    pods: impl Iterator<Item = Pod>,
) -> Result<()> {
    let mut pods = pods.peekable();
    if pods.peek().is_none() {
        return Ok(());
    }
    let (report, stopped) = ctx.api(namespace).create_pods(pods).await;
    if let Some(group) = group_ref(owner) {
        let now = Instant::now();
        ctx.with_expectations(&group, |e| {
            for name in &report.done {
                e.created(name, now);
            }
        });
    }
    batch_result(
        format!(
            "create worker pods of {} {namespace}/{}",
            K::kind(&()),
            owner.name_any()
        ),
        report,
        stopped,
    )
}

/// Deletes pods with the library's batch; those listed with a `resourceVersion` only if
/// still unchanged (one that changed is kept and planned again from its new state).
async fn delete_pods<K: Resource<DynamicType = ()>>(
    ctx: &Context,
    owner: &K,
    namespace: &str,
    pods: &[(String, Option<String>)],
) -> Result<()> {
    if pods.is_empty() {
        return Ok(());
    }
    let (report, changed) = ctx.api(namespace).delete_pods_unchanged(pods).await;
    for pod in &changed {
        info!(%namespace, %pod, "kept: it changed since it was listed");
    }
    if let Some(group) = group_ref(owner) {
        let now = Instant::now();
        ctx.with_expectations(&group, |e| {
            for name in &report.done {
                e.deleted(name, now);
            }
        });
    }
    batch_result(
        format!(
            "delete worker pods of {} {namespace}/{}",
            K::kind(&()),
            owner.name_any()
        ),
        report,
        None,
    )
}

/// Retires the targets' workers, then deletes the pods dask-kube's
/// `retired_pods_to_delete` allows: every worker asked for confirmed retired, and a fresh
/// look (the group's pods from the API, then the scheduler's workers, both taken after the
/// answer) finds no worker in them (a nanny that restarted its worker keeps its pod). A
/// scheduler that cannot be reached, or refuses, deletes nothing.
async fn retire_then_delete<K: Resource<DynamicType = ()>>(
    ctx: &Context,
    owner: &K,
    namespace: &str,
    cluster: &str,
    group: &str,
    targets: &[RetireTarget],
) -> Result<()> {
    let Some(scheduler) = ctx.scheduler(namespace, cluster) else {
        return Err(Error::SchedulerUnreachable {
            endpoint: format!("the scheduler pod of DaskCluster {namespace}/{cluster}"),
            reason: "no running scheduler pod to port-forward to".into(),
        });
    };
    let addresses: Vec<String> = targets.iter().flat_map(|t| t.addresses.clone()).collect();
    let retired: BTreeSet<String> = scheduler.retire_workers(&addresses).await?;
    // Pods first, then workers: a worker that connects in between is seen.
    let fresh_pods: Option<Vec<WorkerPodState>> = ctx
        .api(namespace)
        .list_pods(&format!("{WORKER_GROUP_LABEL}={group}"))
        .await
        .ok()
        .map(|pods| pods.iter().map(WorkerPodState::from_pod).collect());
    let fresh_workers = match &fresh_pods {
        Some(_) => scheduler.workers().await.ok(),
        None => None,
    };
    let fresh = fresh_pods.as_deref().zip(fresh_workers.as_deref());
    let (delete, kept) = retired_pods_to_delete(targets, &retired, fresh);
    for pod in &kept {
        warn!(%namespace, %cluster, "{pod}");
    }
    let delete: Vec<(String, Option<String>)> = delete.into_iter().map(|p| (p, None)).collect();
    delete_pods(ctx, owner, namespace, &delete).await
}
