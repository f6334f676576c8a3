//! The four `kubernetes.dask.org/v1` resources of dask-kubernetes 2026.3.0, as Rust types.
//!
//! The schemas are upstream's field for field (`crds::tests` compares them with the wheel's
//! CRDs), with one deliberate difference: where upstream inlines the Kubernetes 1.21
//! `PodSpec`/`ServiceSpec` schema, ours keeps the object as raw JSON and tells the apiserver to
//! preserve unknown fields. Upstream's inlined 1.21 schema prunes every pod field Kubernetes
//! added since (`os`, `hostUsers`, `schedulingGates`, `resourceClaims`, native sidecars'
//! `restartPolicy`, ...) without a word; here they reach the pods. The pod and service specs
//! are therefore [`RawSpec`]s, edited as JSON by the builders, never round-tripped through
//! k8s-openapi types (which would drop what they do not know).

use kube::CustomResource;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// The API group of every Dask resource.
pub const GROUP: &str = "kubernetes.dask.org";
/// The one served and stored version.
pub const VERSION: &str = "v1";

/// A pod or service spec kept as the user wrote it (see the module docs for why).
pub type RawSpec = Map<String, Value>;

/// The subset of `ObjectMeta` upstream lets users set on the scheduler, workers and job
/// runner: labels and annotations, merged over the resource's own.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SimpleObjectMeta {
    /// Labels added to what this part of the cluster creates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "string_map")]
    pub labels: Option<BTreeMap<String, String>>,
    /// Annotations added to what this part of the cluster creates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "string_map")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// Dask worker configuration: how many, and the pod each one runs in.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DaskWorker {
    /// Number of workers to start.
    #[serde(default = "one_replica")]
    #[schemars(schema_with = "integer")]
    pub replicas: i64,
    /// Labels and annotations for the worker pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "SimpleObjectMeta")]
    pub metadata: Option<SimpleObjectMeta>,
    /// The worker pod's spec.
    #[schemars(schema_with = "pod_spec")]
    pub spec: RawSpec,
}

fn one_replica() -> i64 {
    1
}

/// Dask scheduler configuration: its pod and the Service in front of it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DaskScheduler {
    /// Labels and annotations for the scheduler's Deployment, pod and Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "SimpleObjectMeta")]
    pub metadata: Option<SimpleObjectMeta>,
    /// The scheduler pod's spec.
    #[schemars(schema_with = "pod_spec")]
    pub spec: RawSpec,
    /// The scheduler Service's spec.
    #[schemars(schema_with = "service_spec")]
    pub service: RawSpec,
}

/// A Dask cluster: one scheduler, its Service and a default worker group.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "kubernetes.dask.org",
    version = "v1",
    kind = "DaskCluster",
    namespaced,
    status = "DaskClusterStatus",
    shortname = "daskcluster",
    shortname = "dsk",
    printcolumn(
        name = "Workers",
        type_ = "integer",
        description = "The number of desired worker Pods",
        json_path = ".spec.worker.replicas"
    ),
    printcolumn(name = "Status", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    scale(
        spec_replicas_path = ".spec.worker.replicas",
        status_replicas_path = ".status.replicas"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct DaskClusterSpec {
    /// Delete cluster if scheduler is idle for longer than this timeout. Set to 0 to never
    /// auto cleanup.
    #[serde(default)]
    #[schemars(schema_with = "integer")]
    pub idle_timeout: i64,
    /// The scheduler.
    pub scheduler: DaskScheduler,
    /// The default worker group.
    pub worker: DaskWorker,
}

/// What the operator reports about a cluster (upstream's schema keeps only `phase`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DaskClusterStatus {
    /// Status of the Dask cluster: `Created`, `Pending`, `Running` or `Error`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "string")]
    pub phase: Option<String>,
}

/// A group of workers of one cluster, scaled by `spec.worker.replicas`.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "kubernetes.dask.org",
    version = "v1",
    kind = "DaskWorkerGroup",
    namespaced,
    status = "OpaqueStatus",
    shortname = "daskworkers",
    printcolumn(
        name = "Workers",
        type_ = "integer",
        description = "The number of desired worker Pods",
        json_path = ".spec.worker.replicas"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    scale(
        spec_replicas_path = ".spec.worker.replicas",
        status_replicas_path = ".status.replicas"
    )
)]
pub struct DaskWorkerGroupSpec {
    /// Name of the cluster to associate this worker group with
    pub cluster: String,
    /// The workers.
    pub worker: DaskWorker,
}

/// A status upstream declares as an object with no fields (the apiserver prunes anything
/// written there).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(transform = no_properties)]
pub struct OpaqueStatus {}

/// Adapts a cluster's worker count to what its scheduler asks for, within bounds.
// Two printer columns of the same type read to clippy as one attribute given twice.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "kubernetes.dask.org",
    version = "v1",
    kind = "DaskAutoscaler",
    namespaced,
    status = "OpaqueStatus",
    printcolumn(
        name = "Cluster",
        type_ = "string",
        description = "Cluster to autoscale",
        json_path = ".spec.cluster"
    ),
    printcolumn(name = "Minimum", type_ = "integer", json_path = ".spec.minimum"),
    printcolumn(name = "Maximum", type_ = "integer", json_path = ".spec.maximum"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
pub struct DaskAutoscalerSpec {
    /// Name of the cluster to associate this worker group with
    pub cluster: String,
    /// Minimum number of workers
    #[schemars(schema_with = "integer")]
    pub minimum: i64,
    /// Maximum number of workers
    #[schemars(schema_with = "integer")]
    pub maximum: i64,
}

/// A job pod run against its own Dask cluster, which is removed when the job ends.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "kubernetes.dask.org",
    version = "v1",
    kind = "DaskJob",
    namespaced,
    status = "DaskJobStatus",
    shortname = "djb",
    printcolumn(name = "Status", type_ = "string", json_path = ".status.jobStatus"),
    printcolumn(
        name = "Number Of Workers",
        type_ = "integer",
        json_path = ".spec.cluster.spec.worker.replicas"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
pub struct DaskJobSpec {
    /// The job runner pod.
    pub job: DaskJobRunner,
    /// The cluster the job runs against, named after the job.
    pub cluster: DaskJobCluster,
}

/// The job runner pod of a [`DaskJob`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DaskJobRunner {
    /// Labels and annotations for the runner pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "SimpleObjectMeta")]
    pub metadata: Option<SimpleObjectMeta>,
    /// The runner pod's spec (`restartPolicy` defaults to `OnFailure`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "job_pod_spec")]
    pub spec: Option<RawSpec>,
}

/// The cluster of a [`DaskJob`]: upstream reuses the whole `DaskCluster` schema here, status
/// included.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DaskJobCluster {
    /// The cluster's spec.
    pub spec: DaskClusterSpec,
    /// Unused; part of upstream's schema.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "DaskClusterStatus")]
    pub status: Option<DaskClusterStatus>,
}

/// What the operator reports about a job.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DaskJobStatus {
    /// The job's cluster (named after the job).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "string")]
    pub cluster_name: Option<String>,
    /// When the runner pod ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "nullable_date_time")]
    pub end_time: Option<String>,
    /// The runner pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "nullable_string")]
    pub job_runner_pod_name: Option<String>,
    /// `JobCreated`, `ClusterCreated`, `Running`, `Successful` or `Failed`.
    #[schemars(schema_with = "nullable_string")]
    pub job_status: Option<String>,
    /// When the runner pod started running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "nullable_date_time")]
    pub start_time: Option<String>,
}

// Leaf schemas spelled as upstream's CRDs spell them: plain `integer` (no `format`), and
// `nullable` only where upstream has it.

fn integer(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": "integer"})
}

fn string(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": "string"})
}

fn nullable_string(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": "string", "nullable": true})
}

fn nullable_date_time(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": "string", "format": "date-time", "nullable": true})
}

fn string_map(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": "object", "additionalProperties": {"type": "string"}})
}

fn no_properties(schema: &mut Schema) {
    schema.remove("properties");
}

/// A pod spec: `containers` required (as upstream), everything else kept as written.
fn pod_spec(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "required": ["containers"],
        "properties": {
            "containers": {
                "type": "array",
                "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
            }
        },
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// The job runner's pod spec: as [`pod_spec`] with upstream's `restartPolicy: OnFailure`
/// default (a runner pod must end for the job to end; the Pod API's default, `Always`,
/// would run it forever).
fn job_pod_spec(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "required": ["containers"],
        "properties": {
            "containers": {
                "type": "array",
                "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
            },
            "restartPolicy": {"type": "string", "default": "OnFailure"}
        },
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// A service spec, kept as written.
fn service_spec(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": "object", "x-kubernetes-preserve-unknown-fields": true})
}
