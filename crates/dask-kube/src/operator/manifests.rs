//! The objects the operator creates, built as upstream's `build_*_spec` functions build
//! them (names, labels, annotations, env), as pure functions over the resources. Pod and
//! service specs stay raw JSON (see [`crate::operator::resources`]); only the fields upstream adds are
//! added.
//!
//! Two differences from upstream, both deliberate:
//! - Workers are bare pods owned by their DaskWorkerGroup, not one-replica Deployments (see
//!   the crate README: a third of the objects to create, and a retired worker's pod is
//!   deleted instead of being recreated by its ReplicaSet). A worker pod without a
//!   `restartPolicy` gets `Never`, so a worker that ends (OOM-killed, its scheduler gone)
//!   shows as an ended pod that the operator replaces, as dask-kube's workers do.
//! - The scheduler container gets Dask's HTTP JSON API routes (`/api/v1`: retire_workers,
//!   adaptive_target, check_idle) unless it sets them itself: upstream falls back to Dask's
//!   RPC protocol when they are off, this operator speaks HTTP only.

use crate::operator::names::{
    self, CLUSTER_LABEL, COMPONENT_LABEL, ISTIO_INJECT_LABEL, JOB_RUNNER_COMPONENT,
    SCHEDULER_ADDRESS_ENV, SCHEDULER_COMPONENT, UNCOPIED_ANNOTATION_PREFIXES, WORKER_COMPONENT,
    WORKER_GROUP_COMPONENT, WORKER_GROUP_LABEL, WORKER_NAME_ENV,
};
use crate::operator::resources::{
    DaskCluster, DaskJob, DaskWorkerGroup, RawSpec, SimpleObjectMeta,
};
use crate::{Error, Result};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

/// Dask's default scheduler routes plus the JSON API (`distributed.http.scheduler.api`), as
/// dask-kube's scheduler pods have them.
pub use crate::manifests::{ROUTES, ROUTES_ENV};

/// Annotation on a cluster's default DaskWorkerGroup: the cluster's `spec.worker.replicas`
/// last carried over to the group. Upstream scales the default group when that field
/// *changes* (`kubectl scale daskcluster`), not to it at every event (the client's
/// `scale()` and the autoscaler set the group's replicas directly and must not be undone);
/// this records what "changed" is measured against, across operator restarts.
pub const CLUSTER_REPLICAS_ANNOTATION: &str = "kubernetes.dask.org/cluster-worker-replicas";

/// Labels and annotations an object passes on to what is made from it.
type Meta = (BTreeMap<String, String>, BTreeMap<String, String>);

/// Upstream's `_get_labels`/`_get_annotations` plus the part's own `metadata`: the
/// resource's labels and annotations (without kopf's and kubectl's bookkeeping, and without
/// this operator's), overridden by those of the scheduler/worker/job part.
fn inherited(meta: &ObjectMeta, part: Option<&SimpleObjectMeta>) -> Meta {
    let mut labels = meta.labels.clone().unwrap_or_default();
    let mut annotations: BTreeMap<String, String> = meta
        .annotations
        .iter()
        .flatten()
        .filter(|(k, _)| {
            !UNCOPIED_ANNOTATION_PREFIXES
                .iter()
                .any(|prefix| k.starts_with(prefix))
                && k.as_str() != CLUSTER_REPLICAS_ANNOTATION
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if let Some(part) = part {
        labels.extend(part.labels.clone().unwrap_or_default());
        annotations.extend(part.annotations.clone().unwrap_or_default());
    }
    (labels, annotations)
}

fn with(mut labels: BTreeMap<String, String>, fixed: &[(&str, &str)]) -> BTreeMap<String, String> {
    for (k, v) in fixed {
        labels.insert((*k).to_owned(), (*v).to_owned());
    }
    labels
}

/// The controller owner reference to `owner` (kopf's `adopt`: controller and
/// blockOwnerDeletion set), so deleting it removes what it made.
pub(crate) fn owner_ref<K: Resource<DynamicType = ()>>(owner: &K) -> Result<OwnerReference> {
    owner
        .controller_owner_ref(&())
        .map(|r| OwnerReference {
            block_owner_deletion: Some(true),
            ..r
        })
        .ok_or_else(|| Error::InvalidResource {
            kind: K::kind(&()).into_owned(),
            name: owner.meta().name.clone().unwrap_or_default(),
            reason: "it has no name or uid yet (not read from the API)".into(),
        })
}

fn metadata(
    name: &str,
    labels: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
    owner: &OwnerReference,
) -> Value {
    json!({
        "name": name,
        "labels": labels,
        "annotations": annotations,
        "ownerReferences": [owner],
    })
}

/// Adds `name=value` to every container's env unless the container sets `name` itself
/// (upstream's rule; an `env: null` counts as no env).
fn add_env_if_absent(spec: &mut RawSpec, name: &str, value: &str) {
    for container in containers_mut(spec) {
        set_env_if_absent(container, name, value);
    }
}

fn set_env_if_absent(container: &mut Map<String, Value>, name: &str, value: &str) {
    let env = container.entry("env").or_insert(Value::Null);
    if !env.is_array() {
        *env = json!([]);
    }
    if let Some(env) = env.as_array_mut() {
        let present = env
            .iter()
            .any(|e| e.get("name").and_then(Value::as_str) == Some(name));
        if !present {
            env.push(json!({"name": name, "value": value}));
        }
    }
}

fn containers_mut(spec: &mut RawSpec) -> impl Iterator<Item = &mut Map<String, Value>> {
    spec.get_mut("containers")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
        .filter_map(Value::as_object_mut)
}

/// Whether a container runs the Dask scheduler (`dask scheduler`, `dask-scheduler`, or a
/// shell script that does).
fn runs_scheduler(container: &Map<String, Value>) -> bool {
    ["command", "args"]
        .iter()
        .filter_map(|key| container.get(*key).and_then(Value::as_array))
        .flatten()
        .filter_map(Value::as_str)
        .any(|word| word.contains("scheduler"))
}

fn require_object(spec: &RawSpec, kind: &str, name: &str, field: &str) -> Result<()> {
    match spec.get("containers") {
        Some(Value::Array(c)) if !c.is_empty() => Ok(()),
        _ => Err(Error::InvalidResource {
            kind: kind.to_owned(),
            name: name.to_owned(),
            reason: format!("{field}.containers is empty"),
        }),
    }
}

/// Upstream's `build_scheduler_deployment_spec`: Deployment `<cluster>-scheduler`, one
/// replica (its ReplicaSet recreates a lost scheduler pod), selecting its pod by every label
/// it carries; owned by the cluster.
///
/// # Errors
/// A cluster not read from the API (no uid), or a scheduler pod spec without containers.
pub fn scheduler_deployment(cluster: &DaskCluster) -> Result<Value> {
    let name = cluster.name_any();
    let scheduler = &cluster.spec.scheduler;
    require_object(&scheduler.spec, "DaskCluster", &name, "spec.scheduler.spec")?;
    let (labels, annotations) = inherited(cluster.meta(), scheduler.metadata.as_ref());
    let labels = with(
        labels,
        &[
            (CLUSTER_LABEL, &name),
            (COMPONENT_LABEL, SCHEDULER_COMPONENT),
            (ISTIO_INJECT_LABEL, "false"),
        ],
    );
    let mut pod_spec = scheduler.spec.clone();
    let mut matched = false;
    for container in containers_mut(&mut pod_spec) {
        if runs_scheduler(container) {
            set_env_if_absent(container, ROUTES_ENV, ROUTES);
            matched = true;
        }
    }
    if !matched && let Some(first) = containers_mut(&mut pod_spec).next() {
        set_env_if_absent(first, ROUTES_ENV, ROUTES);
    }
    let deployment_name = names::scheduler_name(&name);
    let owner = owner_ref(cluster)?;
    Ok(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(&deployment_name, &labels, &annotations, &owner),
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels, "annotations": annotations},
                "spec": pod_spec,
            },
        },
    }))
}

/// Upstream's `build_scheduler_service_spec`: Service `<cluster>-scheduler` with the user's
/// service spec; owned by the cluster.
///
/// # Errors
/// A cluster not read from the API (no uid).
pub fn scheduler_service(cluster: &DaskCluster) -> Result<Value> {
    let name = cluster.name_any();
    let scheduler = &cluster.spec.scheduler;
    let (labels, annotations) = inherited(cluster.meta(), scheduler.metadata.as_ref());
    let labels = with(
        labels,
        &[
            (CLUSTER_LABEL, &name),
            (COMPONENT_LABEL, SCHEDULER_COMPONENT),
        ],
    );
    Ok(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(&names::scheduler_name(&name), &labels, &annotations, &owner_ref(cluster)?),
        "spec": scheduler.service,
    }))
}

/// Upstream's `build_default_worker_group_spec`: DaskWorkerGroup `<cluster>-default` with the
/// cluster's whole worker spec. Created owned by the cluster (upstream creates it bare and
/// adopts it in the group's create handler: one write less).
///
/// # Errors
/// A cluster not read from the API (no uid).
pub fn default_worker_group(cluster: &DaskCluster) -> Result<Value> {
    let name = cluster.name_any();
    let worker = &cluster.spec.worker;
    let (labels, mut annotations) = inherited(cluster.meta(), worker.metadata.as_ref());
    let labels = with(
        labels,
        &[
            (CLUSTER_LABEL, &name),
            (COMPONENT_LABEL, WORKER_GROUP_COMPONENT),
        ],
    );
    annotations.insert(
        CLUSTER_REPLICAS_ANNOTATION.to_owned(),
        worker.replicas.to_string(),
    );
    Ok(json!({
        "apiVersion": "kubernetes.dask.org/v1",
        "kind": "DaskWorkerGroup",
        "metadata": metadata(&names::default_worker_group_name(&name), &labels, &annotations, &owner_ref(cluster)?),
        "spec": {"cluster": name, "worker": worker},
    }))
}

/// One worker of a group, as upstream's `build_worker_deployment_spec` makes the pod
/// template of its one-replica Deployment: named `<group>-worker-<suffix>`, labelled with
/// the group's and worker spec's labels, the fixed Dask labels and (without overriding) the
/// cluster's labels; `DASK_WORKER_NAME` = the pod name and `DASK_SCHEDULER_ADDRESS` = the
/// scheduler Service in every container that does not set them. A bare pod owned by the
/// group (see the module docs).
///
/// # Errors
/// A group not read from the API (no uid), or a worker pod spec without containers.
pub fn worker_pod(
    group: &DaskWorkerGroup,
    cluster_labels: &BTreeMap<String, String>,
    suffix: &str,
) -> Result<Value> {
    let group_name = group.name_any();
    let namespace = group.namespace().unwrap_or_default();
    let cluster = &group.spec.cluster;
    let worker = &group.spec.worker;
    require_object(
        &worker.spec,
        "DaskWorkerGroup",
        &group_name,
        "spec.worker.spec",
    )?;
    let (labels, annotations) = inherited(group.meta(), worker.metadata.as_ref());
    let mut labels = with(
        labels,
        &[
            (CLUSTER_LABEL, cluster),
            (WORKER_GROUP_LABEL, &group_name),
            (COMPONENT_LABEL, WORKER_COMPONENT),
            (ISTIO_INJECT_LABEL, "false"),
        ],
    );
    for (k, v) in cluster_labels {
        labels.entry(k.clone()).or_insert_with(|| v.clone());
    }
    let pod_name = names::worker_name(&group_name, suffix);
    let mut spec = worker.spec.clone();
    add_env_if_absent(&mut spec, WORKER_NAME_ENV, &pod_name);
    add_env_if_absent(
        &mut spec,
        SCHEDULER_ADDRESS_ENV,
        &names::scheduler_address(cluster, &namespace),
    );
    spec.entry("restartPolicy")
        .or_insert_with(|| json!("Never"));
    Ok(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata(&pod_name, &labels, &annotations, &owner_ref(group)?),
        "spec": spec,
    }))
}

/// The worker pods one reconcile creates: the group they are made from and, per pod, its
/// name suffix and whether it starts holding the start gate. The batch renders each pod as
/// it sends it, so no more pods exist at once than calls are in flight: the reconcile's
/// rendered pods held at once (500 pods as JSON maps and again as typed pods) were the
/// largest part of the operator's peak heap at 1,000 Pending pods (heaptrack: 6.0 of
/// 20.5 MB, plus 2.4 MB of typed copies).
#[derive(Debug, Clone)]
pub struct WorkerPods {
    group: DaskWorkerGroup,
    cluster_labels: BTreeMap<String, String>,
    pods: Vec<NewWorkerPod>,
}

/// Equal when they render the same pods (the group's status plays no part).
impl PartialEq for WorkerPods {
    fn eq(&self, other: &Self) -> bool {
        self.group.metadata == other.group.metadata
            && self.group.spec == other.group.spec
            && self.cluster_labels == other.cluster_labels
            && self.pods == other.pods
    }
}

/// One pod of [`WorkerPods`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewWorkerPod {
    /// The suffix of its name (`<group>-worker-<suffix>`).
    pub suffix: String,
    /// Created holding the start gate ([`crate::hold_start`]).
    pub held: bool,
}

impl WorkerPods {
    /// No pods yet, for `group` in a cluster labelled `cluster_labels`. The pod is rendered
    /// once here, as a typed pod too, so a worker spec that cannot make one is refused now,
    /// before any pod of the reconcile is sent (the pods differ only in their names).
    ///
    /// # Errors
    /// A group not read from the API (no uid), or a worker pod spec that is not a pod spec.
    pub fn new(group: &DaskWorkerGroup, cluster_labels: &BTreeMap<String, String>) -> Result<Self> {
        typed(worker_pod(group, cluster_labels, "0")?)?;
        Ok(Self {
            group: group.clone(),
            cluster_labels: cluster_labels.clone(),
            pods: Vec::new(),
        })
    }

    /// Adds a pod.
    pub fn push(&mut self, suffix: String, held: bool) {
        self.pods.push(NewWorkerPod { suffix, held });
    }

    /// The pods, in order.
    pub fn pods(&self) -> &[NewWorkerPod] {
        &self.pods
    }

    /// `pod` as [`worker_pod`] makes it, holding the start gate if it is to.
    ///
    /// # Errors
    /// As [`worker_pod`] (not after [`WorkerPods::new`] succeeded).
    pub fn render(&self, pod: &NewWorkerPod) -> Result<Value> {
        let mut manifest = worker_pod(&self.group, &self.cluster_labels, &pod.suffix)?;
        if pod.held {
            crate::hold_start(&mut manifest);
        }
        Ok(manifest)
    }

    /// `pod` rendered as the typed pod the batch sends.
    ///
    /// # Errors
    /// As [`WorkerPods::render`], or a spec that is not a pod spec (neither after
    /// [`WorkerPods::new`] succeeded).
    pub fn render_typed(&self, pod: &NewWorkerPod) -> Result<Pod> {
        typed(self.render(pod)?)
    }
}

/// The typed pods of some [`WorkerPods`], rendered as they are taken. A pod that cannot be
/// rendered (not after [`WorkerPods::new`] rendered the same spec) is logged and skipped:
/// the next reconcile creates it if it is still wanted. A named type, not a chain of
/// closures, so the reconcile future that holds it stays `Send` for every lifetime.
#[derive(Debug)]
pub struct RenderedPods<'a> {
    batches: Vec<&'a WorkerPods>,
    batch: usize,
    pod: usize,
}

impl<'a> RenderedPods<'a> {
    /// The pods of `batches`, in order.
    pub fn new(batches: Vec<&'a WorkerPods>) -> Self {
        Self {
            batches,
            batch: 0,
            pod: 0,
        }
    }
}

impl Iterator for RenderedPods<'_> {
    type Item = Pod;

    fn next(&mut self) -> Option<Pod> {
        loop {
            let pods = self.batches.get(self.batch)?;
            let Some(pod) = pods.pods().get(self.pod) else {
                self.batch += 1;
                self.pod = 0;
                continue;
            };
            self.pod += 1;
            match pods.render_typed(pod) {
                Ok(rendered) => return Some(rendered),
                Err(e) => {
                    tracing::warn!(suffix = %pod.suffix, error = %e, "worker pod not rendered")
                }
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left: usize = self
            .batches
            .iter()
            .skip(self.batch)
            .map(|b| b.pods.len())
            .sum::<usize>()
            .saturating_sub(self.pod);
        (0, Some(left))
    }
}

/// A rendered pod as the typed pod the API client sends.
///
/// # Errors
/// A manifest that is not a pod.
pub fn typed(manifest: Value) -> Result<Pod> {
    serde_json::from_value(manifest).map_err(|e| Error::Render {
        what: "Pod",
        reason: e.to_string(),
    })
}

/// Upstream's `build_cluster_spec` for a DaskJob: DaskCluster `<job>` with the job's labels
/// and annotations, owned by the job. Ours keeps the job cluster's `idleTimeout`, which
/// upstream drops.
///
/// # Errors
/// A job not read from the API (no uid).
pub fn job_cluster(job: &DaskJob) -> Result<Value> {
    let name = job.name_any();
    let (labels, annotations) = inherited(job.meta(), None);
    let labels = with(labels, &[(CLUSTER_LABEL, &name)]);
    Ok(json!({
        "apiVersion": "kubernetes.dask.org/v1",
        "kind": "DaskCluster",
        "metadata": metadata(&name, &labels, &annotations, &owner_ref(job)?),
        "spec": job.spec.cluster.spec,
    }))
}

/// Upstream's `build_job_pod_spec`: pod `<job>-runner` with `DASK_SCHEDULER_ADDRESS` in every
/// container that does not set it, owned by the job. `restartPolicy` is `OnFailure` unless
/// set (the CRD defaults it; the builder does too, for objects that skipped the apiserver).
///
/// # Errors
/// A job not read from the API (no uid), or without a runner pod spec.
pub fn job_runner_pod(job: &DaskJob) -> Result<Value> {
    let name = job.name_any();
    let namespace = job.namespace().unwrap_or_default();
    let mut spec = job.spec.job.spec.clone().unwrap_or_default();
    require_object(&spec, "DaskJob", &name, "spec.job.spec")?;
    let (labels, annotations) = inherited(job.meta(), job.spec.job.metadata.as_ref());
    let labels = with(
        labels,
        &[
            (CLUSTER_LABEL, &name),
            (COMPONENT_LABEL, JOB_RUNNER_COMPONENT),
            (ISTIO_INJECT_LABEL, "false"),
        ],
    );
    add_env_if_absent(
        &mut spec,
        SCHEDULER_ADDRESS_ENV,
        &names::scheduler_address(&name, &namespace),
    );
    spec.entry("restartPolicy")
        .or_insert_with(|| json!("OnFailure"));
    Ok(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata(&names::job_runner_pod_name(&name), &labels, &annotations, &owner_ref(job)?),
        "spec": spec,
    }))
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use rstest::rstest;
    use serde::de::DeserializeOwned;

    /// An upstream test resource as the API returns it: namespace `ns` and a uid.
    pub(crate) fn upstream_resource<K: DeserializeOwned + Resource>(file: &str) -> K {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/operator/upstream-2026.3.0/resources")
            .join(file);
        let mut value: Value =
            serde_norway::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        value["metadata"]["namespace"] = json!("ns");
        value["metadata"]["uid"] = json!(format!("uid-of-{file}"));
        serde_json::from_value(value).unwrap()
    }

    fn env_of(pod_spec: &Value) -> Vec<(String, String)> {
        pod_spec["containers"][0]["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["name"].as_str().unwrap().to_owned(),
                    e["value"].as_str().unwrap_or("<from>").to_owned(),
                )
            })
            .collect()
    }

    fn label(object: &Value, key: &str) -> Option<String> {
        object["metadata"]["labels"][key]
            .as_str()
            .map(str::to_owned)
    }

    #[test]
    fn scheduler_deployment_is_upstreams_with_the_http_api() {
        let cluster: DaskCluster = upstream_resource("simplecluster.yaml");
        let d = scheduler_deployment(&cluster).unwrap();
        assert_eq!(d["metadata"]["name"], "simple-scheduler");
        for (k, v) in [
            ("test-label", "label-value"),
            ("scheduler-sublabel", "label-value"),
            ("dask.org/cluster-name", "simple"),
            ("dask.org/component", "scheduler"),
            ("sidecar.istio.io/inject", "false"),
        ] {
            assert_eq!(label(&d, k).as_deref(), Some(v), "{k}");
        }
        assert_eq!(
            d["spec"]["selector"]["matchLabels"],
            d["metadata"]["labels"]
        );
        assert_eq!(
            d["spec"]["template"]["metadata"]["labels"],
            d["metadata"]["labels"]
        );
        let annotations = &d["spec"]["template"]["metadata"]["annotations"];
        assert_eq!(annotations["test-annotation"], "annotation-value");
        assert_eq!(annotations["scheduler-subannotation"], "annotation-value");
        assert!(annotations.get("kopf.zalando.org/foobar").is_none());
        assert!(annotations.get("kubectl.kubernetes.io").is_none());
        let env = env_of(&d["spec"]["template"]["spec"]);
        assert_eq!(
            env[0],
            ("SCHEDULER_ENV".to_owned(), "hello-world".to_owned())
        );
        assert_eq!(env[1], (ROUTES_ENV.to_owned(), ROUTES.to_owned()));
        let owner = &d["metadata"]["ownerReferences"][0];
        assert_eq!(owner["kind"], "DaskCluster");
        assert_eq!(owner["name"], "simple");
        assert_eq!(owner["controller"], true);
        assert_eq!(owner["blockOwnerDeletion"], true);
    }

    #[rstest]
    #[case::user_routes_kept(json!([{"name": ROUTES_ENV, "value": "[\"mine\"]"}]), "[\"mine\"]")]
    #[case::null_env(Value::Null, ROUTES)]
    #[case::no_env(json!("absent"), ROUTES)]
    fn scheduler_routes_only_when_unset(#[case] env: Value, #[case] expected: &str) {
        let mut cluster: DaskCluster = upstream_resource("simplecluster.yaml");
        let container = cluster.spec.scheduler.spec["containers"][0]
            .as_object_mut()
            .unwrap();
        if env == json!("absent") {
            container.remove("env");
        } else {
            container.insert("env".into(), env);
        }
        let d = scheduler_deployment(&cluster).unwrap();
        let env = env_of(&d["spec"]["template"]["spec"]);
        let routes: Vec<_> = env.iter().filter(|(n, _)| n == ROUTES_ENV).collect();
        assert_eq!(routes.len(), 1);
        assert_eq!(routes[0].1, expected);
    }

    #[test]
    fn scheduler_routes_go_to_the_container_that_runs_the_scheduler() {
        let mut cluster: DaskCluster = upstream_resource("simplecluster.yaml");
        let containers = cluster.spec.scheduler.spec["containers"]
            .as_array_mut()
            .unwrap();
        containers.insert(
            0,
            json!({"name": "sidecar", "image": "busybox", "args": ["sleep", "inf"]}),
        );
        let d = scheduler_deployment(&cluster).unwrap();
        let c = &d["spec"]["template"]["spec"]["containers"];
        assert!(c[0].get("env").is_none(), "the sidecar is left alone");
        assert!(
            env_of(&json!({"containers": [c[1]]}))
                .iter()
                .any(|(n, _)| n == ROUTES_ENV)
        );
    }

    #[test]
    fn service_and_default_group_are_upstreams() {
        let cluster: DaskCluster = upstream_resource("simplecluster.yaml");
        let s = scheduler_service(&cluster).unwrap();
        assert_eq!(s["metadata"]["name"], "simple-scheduler");
        assert_eq!(
            label(&s, "dask.org/component").as_deref(),
            Some("scheduler")
        );
        assert_eq!(label(&s, "sidecar.istio.io/inject"), None);
        assert_eq!(
            s["metadata"]["annotations"]["test-annotation"],
            "annotation-value"
        );
        assert_eq!(s["spec"], json!(cluster.spec.scheduler.service));

        let g = default_worker_group(&cluster).unwrap();
        assert_eq!(g["metadata"]["name"], "simple-default");
        assert_eq!(
            label(&g, "dask.org/component").as_deref(),
            Some("workergroup")
        );
        assert_eq!(label(&g, "worker-sublabel").as_deref(), Some("label-value"));
        assert_eq!(label(&g, "test-label").as_deref(), Some("label-value"));
        assert_eq!(
            g["metadata"]["annotations"][CLUSTER_REPLICAS_ANNOTATION],
            "2"
        );
        assert_eq!(g["spec"]["cluster"], "simple");
        assert_eq!(g["spec"]["worker"], json!(cluster.spec.worker));
    }

    #[test]
    fn worker_pod_is_upstreams_deployment_template_as_a_bare_pod() {
        let cluster: DaskCluster = upstream_resource("simplecluster.yaml");
        let mut group: DaskWorkerGroup =
            serde_json::from_value(default_worker_group(&cluster).unwrap()).unwrap();
        group.metadata.uid = Some("group-uid".into());
        group.metadata.namespace = Some("ns".into());
        let cluster_labels = BTreeMap::from([
            ("test-label".to_owned(), "label-value".to_owned()),
            ("dask.org/component".to_owned(), "not-overriding".to_owned()),
            ("team".to_owned(), "a".to_owned()),
        ]);
        let p = worker_pod(&group, &cluster_labels, "0123456789").unwrap();
        assert_eq!(p["metadata"]["name"], "simple-default-worker-0123456789");
        for (k, v) in [
            ("dask.org/cluster-name", "simple"),
            ("dask.org/workergroup-name", "simple-default"),
            ("dask.org/component", "worker"),
            ("worker-sublabel", "label-value"),
            ("team", "a"),
        ] {
            assert_eq!(label(&p, k).as_deref(), Some(v), "{k}");
        }
        let annotations = &p["metadata"]["annotations"];
        assert_eq!(annotations["worker-subannotation"], "annotation-value");
        assert!(annotations.get(CLUSTER_REPLICAS_ANNOTATION).is_none());
        assert_eq!(
            env_of(&p["spec"]),
            [
                ("WORKER_ENV", "hello-world"),
                ("DASK_WORKER_NAME", "simple-default-worker-0123456789"),
                (
                    "DASK_SCHEDULER_ADDRESS",
                    "tcp://simple-scheduler.ns.svc.cluster.local:8786"
                ),
            ]
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
        );
        assert_eq!(p["spec"]["restartPolicy"], "Never");
        let owner = &p["metadata"]["ownerReferences"][0];
        assert_eq!(
            (owner["kind"].as_str(), owner["uid"].as_str()),
            (Some("DaskWorkerGroup"), Some("group-uid"))
        );
    }

    #[test]
    fn worker_pods_render_one_at_a_time_in_order_with_their_gates() {
        let group: DaskWorkerGroup = upstream_resource("simpleworkergroup.yaml");
        let mut first = WorkerPods::new(&group, &BTreeMap::new()).unwrap();
        first.push("a".into(), false);
        first.push("b".into(), true);
        let mut second = WorkerPods::new(&group, &BTreeMap::new()).unwrap();
        second.push("c".into(), false);
        let empty = WorkerPods::new(&group, &BTreeMap::new()).unwrap();
        let mut rendered = RenderedPods::new(vec![&first, &empty, &second]);
        assert_eq!(rendered.size_hint(), (0, Some(3)));
        let mut seen = Vec::new();
        while let Some(pod) = rendered.next() {
            let spec = pod.spec.unwrap_or_default();
            let gates: Vec<String> = spec
                .scheduling_gates
                .unwrap_or_default()
                .into_iter()
                .map(|g| g.name)
                .collect();
            seen.push((pod.metadata.name.unwrap_or_default(), gates));
            assert_eq!(rendered.size_hint().1, Some(3 - seen.len()));
        }
        let name = |s: &str| format!("{}-worker-{s}", group.name_any());
        assert_eq!(
            seen,
            [
                (name("a"), vec![]),
                (name("b"), vec![crate::START_GATE.to_owned()]),
                (name("c"), vec![]),
            ]
        );
        // Each pod as worker_pod makes it.
        assert_eq!(
            first.render(&first.pods()[0]).unwrap(),
            worker_pod(&group, &BTreeMap::new(), "a").unwrap()
        );
    }

    #[rstest]
    #[case::containers_not_a_list(json!({"containers": "worker"}), "containers")]
    #[case::no_containers(json!({"restartPolicy": "Never"}), "containers")]
    #[case::not_a_pod_spec(json!({"containers": [{"name": "worker", "image": 5}]}), "Pod")]
    fn worker_pods_refuse_a_spec_that_makes_no_pod(#[case] spec: Value, #[case] named: &str) {
        let mut group: DaskWorkerGroup = upstream_resource("simpleworkergroup.yaml");
        group.spec.worker.spec = serde_json::from_value(spec).unwrap();
        let e = WorkerPods::new(&group, &BTreeMap::new()).unwrap_err();
        assert!(e.to_string().contains(named), "{e}");
    }

    #[test]
    fn worker_pod_keeps_the_users_fields_and_names() {
        let mut group: DaskWorkerGroup = upstream_resource("simpleworkergroup.yaml");
        group
            .spec
            .worker
            .spec
            .insert("hostUsers".into(), json!(false));
        group
            .spec
            .worker
            .spec
            .insert("restartPolicy".into(), json!("Always"));
        group.spec.worker.spec["containers"][0]["resizePolicy"] =
            json!([{"resourceName": "cpu", "restartPolicy": "NotRequired"}]);
        let p = worker_pod(&group, &BTreeMap::new(), "abc").unwrap();
        assert_eq!(p["spec"]["hostUsers"], false);
        assert_eq!(p["spec"]["restartPolicy"], "Always");
        assert_eq!(
            p["spec"]["containers"][0]["resizePolicy"][0]["resourceName"],
            "cpu"
        );
        let env = env_of(&p["spec"]);
        assert!(env.contains(&("DASK_WORKER_NAME".to_owned(), "test-worker".to_owned())));
        assert_eq!(
            env.iter().filter(|(n, _)| n == "DASK_WORKER_NAME").count(),
            1
        );
    }

    #[test]
    fn job_cluster_and_runner_are_upstreams() {
        let job: DaskJob = upstream_resource("simplejob.yaml");
        let c = job_cluster(&job).unwrap();
        assert_eq!(c["metadata"]["name"], "simple-job");
        assert_eq!(
            label(&c, "dask.org/cluster-name").as_deref(),
            Some("simple-job")
        );
        assert_eq!(
            c["metadata"]["annotations"]["test-annotation"],
            "annotation-value"
        );
        assert_eq!(c["metadata"]["ownerReferences"][0]["kind"], "DaskJob");
        assert_eq!(c["spec"]["worker"]["replicas"], 2);
        let _: DaskCluster = serde_json::from_value(c).unwrap();

        let p = job_runner_pod(&job).unwrap();
        assert_eq!(p["metadata"]["name"], "simple-job-runner");
        assert_eq!(
            label(&p, "dask.org/component").as_deref(),
            Some("job-runner")
        );
        assert_eq!(
            label(&p, "dask.org/cluster-name").as_deref(),
            Some("simple-job")
        );
        assert_eq!(
            p["metadata"]["annotations"]["test-annotation"],
            "annotation-value"
        );
        assert_eq!(p["spec"]["restartPolicy"], "OnFailure");
        assert_eq!(
            env_of(&p["spec"]),
            [(
                "DASK_SCHEDULER_ADDRESS".to_owned(),
                "tcp://simple-job-scheduler.ns.svc.cluster.local:8786".to_owned()
            )]
        );
        let failed: DaskJob = upstream_resource("failedjob.yaml");
        assert_eq!(
            job_runner_pod(&failed).unwrap()["spec"]["restartPolicy"],
            "Never"
        );
    }

    #[rstest]
    #[case::no_containers(json!({}))]
    #[case::empty_containers(json!({"containers": []}))]
    fn a_pod_spec_without_containers_is_refused_naming_the_field(#[case] spec: Value) {
        let mut cluster: DaskCluster = upstream_resource("simplecluster.yaml");
        cluster.spec.scheduler.spec = serde_json::from_value(spec).unwrap();
        let err = scheduler_deployment(&cluster).unwrap_err().to_string();
        assert!(err.contains("spec.scheduler.spec.containers"), "{err}");
        assert!(err.contains("DaskCluster simple"), "{err}");
    }

    #[test]
    fn an_object_without_uid_is_refused() {
        let mut cluster: DaskCluster = upstream_resource("simplecluster.yaml");
        cluster.metadata.uid = None;
        assert!(scheduler_service(&cluster).is_err());
    }
}
