//! The objects a cluster is made of, built as pure functions over JSON: the scheduler pod,
//! its Service, and worker pods from the user's template with the worker defaults applied
//! client-side by `dask-worker-spec` (so pods are right on clusters without the policy, and
//! the policy finds nothing to change on clusters with it).

use crate::template::PodTemplate;
use crate::tls::{self, TlsMode};
use crate::{Error, Result};
use dask_worker_spec::{
    DaskComponent, DefaultAffinity, PodSpecRules, WorkerCommandLine, WorkerDefaults,
    apply_dedicated_pool, apply_worker_defaults, labels,
};
use k8s_openapi::api::core::v1::{Pod, Service};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

/// The scheduler's comm port (`tcp-comm`).
pub const SCHEDULER_PORT: u16 = 8786;
/// The scheduler's dashboard and HTTP API port (`http-dashboard`).
pub const DASHBOARD_PORT: u16 = 8787;
/// Env var workers read the scheduler address from.
pub const SCHEDULER_ADDRESS_ENV: &str = "DASK_SCHEDULER_ADDRESS";
/// Env var that replaces the scheduler's HTTP routes.
pub const ROUTES_ENV: &str = "DASK_DISTRIBUTED__SCHEDULER__HTTP__ROUTES";
/// The scheduler's route list with the JSON API (`/api/v1`) enabled, which is off by default.
pub const ROUTES: &str = r#"["distributed.http.scheduler.prometheus","distributed.http.scheduler.info","distributed.http.scheduler.json","distributed.http.health","distributed.http.proxy","distributed.http.statics","distributed.http.scheduler.api"]"#;
/// `app=dask` on every object, as dask-kubernetes labels them.
pub const APP_LABEL: (&str, &str) = ("app", "dask");
/// The `user` label.
pub const USER_LABEL: &str = "user";
/// Annotation on the scheduler pod naming the process that keeps the port-forward (and
/// adapt controller) alive: `<host>:<pid>`.
pub const SUPERVISOR_ANNOTATION: &str = "dask.org/supervisor";
/// Annotation naming the adaptive range a supervisor runs (`MIN:MAX`).
pub const ADAPT_ANNOTATION: &str = "dask.org/adapt";
/// Name of the scheduler container dask-kube builds.
pub const SCHEDULER_CONTAINER: &str = "scheduler";
/// Placeholder uid in rendered manifests (the real one exists only after creation).
pub const UID_PLACEHOLDER: &str = "<uid of the scheduler pod>";

/// Everything that defines one cluster's objects.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// Cluster name: the scheduler pod and Service are named after it.
    pub name: String,
    /// Namespace of every object.
    pub namespace: String,
    /// Escaped user, for the `user` label.
    pub user: String,
    /// The worker pod template.
    pub worker: PodTemplate,
    /// An explicit scheduler pod template; else one is derived from the worker template.
    pub scheduler: Option<PodTemplate>,
    /// Extra `dask scheduler` options.
    pub scheduler_options: Vec<String>,
    /// The worker defaults.
    pub defaults: WorkerDefaults,
    /// A scheduler that already runs elsewhere (no scheduler pod, no Service).
    pub external_scheduler: Option<String>,
    /// That scheduler's HTTP server (`host:port`), when not its host at port 8787.
    pub external_scheduler_api: Option<String>,
    /// `distributed.adaptive.target-duration` for the scheduler: the scheduler's
    /// `/api/v1/adaptive_target` reads it from its own configuration, so this is where
    /// `adapt(..., target_duration=...)` of dask-kubernetes takes effect.
    pub adaptive_target_duration: Option<String>,
    /// The Service's type.
    pub service_type: ServiceType,
    /// How the client, scheduler and workers talk: [`TlsMode::ClusterCa`] mounts the
    /// cluster's certificates (the Secret `<name>-tls`) and sets Dask's TLS settings in both
    /// pods; with any TLS the addresses are `tls://` and the scheduler's HTTP server
    /// listens on its pod's loopback only ([`TlsMode::private_http`]).
    pub tls: TlsMode,
}

/// The type of the scheduler's Service (`scheduler_service_type=`): how it is reached from
/// outside the cluster. dask-kube itself reaches it through port-forward or its DNS name,
/// whichever the type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ServiceType {
    /// Inside the cluster only.
    #[default]
    ClusterIP,
    /// Also on a port of every node.
    NodePort,
    /// Also behind a cloud load balancer.
    LoadBalancer,
}

impl ServiceType {
    /// The API's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::ClusterIP => "ClusterIP",
            ServiceType::NodePort => "NodePort",
            ServiceType::LoadBalancer => "LoadBalancer",
        }
    }
}

impl std::str::FromStr for ServiceType {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "ClusterIP" => Ok(ServiceType::ClusterIP),
            "NodePort" => Ok(ServiceType::NodePort),
            "LoadBalancer" => Ok(ServiceType::LoadBalancer),
            other => Err(Error::Usage(format!(
                "scheduler service type {other:?}: ClusterIP, NodePort or LoadBalancer"
            ))),
        }
    }
}

/// The scheduler's Service of cluster `cluster`: `<cluster>-scheduler`, as the
/// dask-kubernetes operator names it (its users' code and docs reach
/// `tls://<cluster>-scheduler.<namespace>:8786`, `tcp://` without TLS).
pub fn service_name(cluster: &str) -> String {
    format!("{cluster}-scheduler")
}

/// Env var the scheduler reads `distributed.adaptive.target-duration` from.
pub const TARGET_DURATION_ENV: &str = "DASK_DISTRIBUTED__ADAPTIVE__TARGET_DURATION";

/// Checks a Dask time delta (`500ms`, `0.5s`, `2`, `1m`) as `dask.utils.parse_timedelta`
/// reads it, so a typo fails here rather than in the scheduler pod.
pub fn validate_timedelta(text: &str) -> std::result::Result<(), String> {
    timedelta_seconds(text).map(|_| ())
}

/// A Dask time delta in seconds (`500ms` is 0.5, a bare number is seconds), as
/// `dask.utils.parse_timedelta` reads the units dask-kube accepts; a positive duration.
pub fn timedelta_seconds(text: &str) -> std::result::Result<f64, String> {
    let t = text.trim();
    let unit_at = t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len());
    let (number, unit) = t.split_at(unit_at);
    let number = number
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|n| n.is_finite() && *n > 0.0);
    let scale = match unit.trim() {
        "" | "s" | "sec" | "secs" | "second" | "seconds" => Some(1.0),
        "ms" | "millisecond" | "milliseconds" => Some(1e-3),
        "us" | "microsecond" | "microseconds" => Some(1e-6),
        "m" | "min" | "minute" | "minutes" => Some(60.0),
        "h" | "hour" | "hours" => Some(3600.0),
        _ => None,
    };
    match (number, scale) {
        (Some(n), Some(scale)) => Ok(n * scale),
        _ => Err(format!(
            "{text:?} is not a positive duration like 500ms, 0.5s, 2s or 1m"
        )),
    }
}

/// Whether `dask scheduler` options set `--idle-timeout` (then the scheduler can end by
/// itself, and the cluster needs its controller pod to be deleted after it).
pub fn has_idle_timeout(scheduler_options: &[String]) -> bool {
    scheduler_options
        .iter()
        .any(|o| o == "--idle-timeout" || o.starts_with("--idle-timeout="))
}

/// A worker pod manifest and what the defaults had to say about the template.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerPod {
    /// The pod (no owner yet).
    pub pod: Value,
    /// Warnings from the defaults (parts left alone, and why).
    pub warnings: Vec<String>,
}

/// The owner every cluster object points at: the scheduler pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// Scheduler pod name.
    pub name: String,
    /// Scheduler pod uid.
    pub uid: String,
}

impl Owner {
    /// The `ownerReferences` entry. `blockOwnerDeletion` so a foreground deletion of the
    /// scheduler waits for its dependents; not `controller`, since no controller manages
    /// these pods.
    pub fn reference(&self) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "name": self.name,
            "uid": self.uid,
            "blockOwnerDeletion": true,
        })
    }
}

impl ClusterSpec {
    /// Labels of the objects of `component` (`scheduler` or `worker`).
    pub fn labels(&self, component: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            (labels::CLUSTER_NAME.to_owned(), self.name.clone()),
            (labels::COMPONENT.to_owned(), component.to_owned()),
            (APP_LABEL.0.to_owned(), APP_LABEL.1.to_owned()),
            (USER_LABEL.to_owned(), self.user.clone()),
        ])
    }

    /// The label selector of this cluster's pods of `component`.
    pub fn selector(&self, component: &str) -> String {
        selector(&self.name, component)
    }

    /// The address workers connect to: the Service's DNS name (`tls://` with TLS), or the
    /// external scheduler.
    pub fn worker_scheduler_address(&self) -> String {
        match &self.external_scheduler {
            Some(address) => address.clone(),
            None => format!(
                "{}://{}.{}:{SCHEDULER_PORT}",
                self.tls.scheme(),
                service_name(&self.name),
                self.namespace
            ),
        }
    }

    /// Whether the pods mount the cluster's own certificates.
    fn mounts_cluster_tls(&self) -> bool {
        self.tls == TlsMode::ClusterCa && self.external_scheduler.is_none()
    }

    /// Where the scheduler's HTTP server listens: every address, or (with TLS) only the
    /// pod's loopback, where port-forward reaches it and nothing else in the cluster does.
    fn dashboard_address(&self) -> String {
        if self.tls.private_http() {
            format!("127.0.0.1:{DASHBOARD_PORT}")
        } else {
            format!(":{DASHBOARD_PORT}")
        }
    }

    fn metadata(&self, template: &Value, component: &str) -> Map<String, Value> {
        let mut metadata = template
            .get("metadata")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        for key in [
            "name",
            "generateName",
            "uid",
            "resourceVersion",
            "creationTimestamp",
            "ownerReferences",
            "managedFields",
            "selfLink",
            "deletionTimestamp",
        ] {
            metadata.remove(key);
        }
        metadata.insert("namespace".into(), json!(self.namespace));
        let labels = metadata.entry("labels").or_insert_with(|| json!({}));
        if !labels.is_object() {
            *labels = json!({});
        }
        if let Some(labels) = labels.as_object_mut() {
            for (k, v) in self.labels(component) {
                labels.insert(k, json!(v));
            }
        }
        metadata
    }

    /// The scheduler pod: `dask scheduler` with the HTTP API enabled, from the scheduler
    /// template or the worker template's image.
    pub fn scheduler_pod(&self) -> Result<Value> {
        let args = {
            let mut args: Vec<String> = [
                "dask",
                "scheduler",
                "--port",
                &SCHEDULER_PORT.to_string(),
                "--dashboard-address",
                &self.dashboard_address(),
            ]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
            args.extend(self.scheduler_options.iter().cloned());
            args
        };
        let (mut pod, origin) = match &self.scheduler {
            Some(template) => (template.pod.clone(), template.origin.clone()),
            None => (self.derive_scheduler_template(), self.worker.origin.clone()),
        };
        let metadata = self.metadata(&pod, labels::SCHEDULER);
        let Some(pod_map) = pod.as_object_mut() else {
            return Err(invalid_scheduler(&origin, "not a mapping"));
        };
        pod_map.insert("apiVersion".into(), json!("v1"));
        pod_map.insert("kind".into(), json!("Pod"));
        pod_map.insert("metadata".into(), Value::Object(metadata));
        if let Some(meta) = pod_map.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("name".into(), json!(self.name));
        }
        let spec = pod_map
            .get_mut("spec")
            .and_then(Value::as_object_mut)
            .ok_or_else(|| invalid_scheduler(&origin, "spec is missing"))?;
        spec.insert("restartPolicy".into(), json!("Never"));
        // Classic's `clean_pod_template(pod_type="scheduler")`: the scheduler pool's
        // tolerations and, as `apply_default_affinity` says, its node affinity.
        let mut pool = Value::Object(std::mem::take(spec));
        apply_dedicated_pool(
            &mut pool,
            "spec",
            DaskComponent::Scheduler,
            self.defaults.apply_default_affinity,
        )
        .map_err(|e| invalid_scheduler(&origin, &e.to_string()))?;
        if let Value::Object(map) = pool {
            *spec = map;
        }
        let container = spec
            .get_mut("containers")
            .and_then(Value::as_array_mut)
            .and_then(|c| c.first_mut())
            .and_then(Value::as_object_mut)
            .ok_or_else(|| invalid_scheduler(&origin, "spec.containers is empty"))?;
        let has_command = container.get("args").is_some_and(|a| !a.is_null())
            || container.get("command").is_some_and(|c| !c.is_null());
        if !has_command {
            container.insert("args".into(), json!(args));
        }
        set_env(container, ROUTES_ENV, ROUTES, false);
        if let Some(duration) = &self.adaptive_target_duration {
            set_env(container, TARGET_DURATION_ENV, duration, true);
        }
        if container.get("ports").is_none_or(Value::is_null) {
            let mut ports = vec![
                json!({"name": "tcp-comm", "containerPort": SCHEDULER_PORT, "protocol": "TCP"}),
            ];
            if !self.tls.private_http() {
                ports.push(json!({"name": "http-dashboard", "containerPort": DASHBOARD_PORT, "protocol": "TCP"}));
            }
            container.insert("ports".into(), json!(ports));
        }
        let absent = |c: &Map<String, Value>, key: &str| c.get(key).is_none_or(Value::is_null);
        if !self.tls.private_http() {
            if absent(container, "readinessProbe") {
                container.insert(
                    "readinessProbe".into(),
                    json!({"tcpSocket": {"port": SCHEDULER_PORT}, "periodSeconds": 2, "failureThreshold": 3}),
                );
            }
        } else if !has_command
            && absent(container, "readinessProbe")
            && absent(container, "startupProbe")
        {
            // With TLS a TCP probe of 8786 would log a failed handshake every period, and
            // 8787 answers on the pod's loopback only: the scheduler's own `/health`,
            // asked from inside the container until it answers once. Only on the command
            // dask-kube writes, which listens there.
            container.insert("startupProbe".into(), scheduler_health_probe());
        }
        if self.mounts_cluster_tls() {
            tls::mount(container);
            add_volume(spec, tls::pod_volume(&self.name));
        }
        no_token_unless_asked(spec);
        Ok(pod)
    }

    /// A scheduler pod template from the worker template, as classic dask-kubernetes
    /// derives it: the whole pod (volumes and mounts, placement, service account, pull
    /// secrets, security context, env, annotations) with its first container running the
    /// scheduler. Dropped: what only a worker uses (its command and args, ports and probes,
    /// the scheduler address and worker name variables), other containers (a second
    /// container would make the scheduler's log ambiguous to read), and, unlike classic,
    /// the container's resources: they are sized for a worker (the README's 2 CPUs and
    /// 6 GB, a GPU), which a scheduler does not use and a node may not have spare; a
    /// scheduler template sizes the scheduler.
    fn derive_scheduler_template(&self) -> Value {
        let mut pod = self.worker.pod.clone();
        if let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) {
            let first = spec
                .get("containers")
                .and_then(Value::as_array)
                .and_then(|c| c.first())
                .cloned()
                .unwrap_or_else(|| json!({}));
            let mut container = first.as_object().cloned().unwrap_or_default();
            for key in [
                "command",
                "args",
                "ports",
                "readinessProbe",
                "livenessProbe",
                "startupProbe",
                "resources",
            ] {
                container.remove(key);
            }
            container.insert("name".into(), json!(SCHEDULER_CONTAINER));
            if let Some(env) = container.get_mut("env").and_then(Value::as_array_mut) {
                env.retain(|e| {
                    let name = e.get("name").and_then(Value::as_str).unwrap_or_default();
                    name != SCHEDULER_ADDRESS_ENV && name != dask_worker_spec::WORKER_NAME_ENV
                });
            }
            spec.insert("containers".into(), json!([container]));
        }
        pod
    }

    /// The scheduler Service `<name>-scheduler` ([`service_name`]): 8786 `tcp-comm` (and
    /// 8787 `http-dashboard` without TLS), of [`ClusterSpec::service_type`].
    pub fn service(&self, owner: Option<&Owner>) -> Value {
        let mut metadata = json!({
            "name": service_name(&self.name),
            "namespace": self.namespace,
            "labels": self.labels(labels::SCHEDULER),
        });
        if let Some(owner) = owner {
            metadata["ownerReferences"] = json!([owner.reference()]);
        }
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": metadata,
            "spec": {
                "type": self.service_type.as_str(),
                "selector": {
                    labels::CLUSTER_NAME: self.name,
                    labels::COMPONENT: labels::SCHEDULER,
                },
                "ports": self.service_ports(),
            },
        })
    }

    /// 8786 `tcp-comm`, and 8787 `http-dashboard` unless the HTTP server is private.
    fn service_ports(&self) -> Value {
        let mut ports = vec![
            json!({"name": "tcp-comm", "port": SCHEDULER_PORT, "targetPort": SCHEDULER_PORT, "protocol": "TCP"}),
        ];
        if !self.tls.private_http() {
            ports.push(json!({"name": "http-dashboard", "port": DASHBOARD_PORT, "targetPort": DASHBOARD_PORT, "protocol": "TCP"}));
        }
        json!(ports)
    }

    /// A worker pod: the template with this cluster's metadata, `generateName`, the
    /// scheduler address, and the worker defaults.
    pub fn worker_pod(&self) -> Result<WorkerPod> {
        let origin = &self.worker.origin;
        let mut pod = self.worker.pod.clone();
        let mut metadata = self.metadata(&pod, labels::WORKER);
        metadata.insert(
            "generateName".into(),
            json!(format!("{}{}", self.name, crate::names::WORKER_NAME_INFIX)),
        );
        let Some(pod_map) = pod.as_object_mut() else {
            return Err(invalid_worker(origin, "not a mapping"));
        };
        pod_map.insert("apiVersion".into(), json!("v1"));
        pod_map.insert("kind".into(), json!("Pod"));
        pod_map.insert("metadata".into(), Value::Object(metadata));
        pod_map.remove("status");
        let address = self.worker_scheduler_address();
        let containers = pod_map
            .get_mut("spec")
            .and_then(|s| s.get_mut("containers"))
            .and_then(Value::as_array_mut)
            .ok_or_else(|| invalid_worker(origin, "spec.containers is missing"))?;
        let runs_worker = |c: &Value| {
            let words = |key: &str| -> Vec<String> {
                c.get(key)
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(Value::as_str)
                            .map(str::to_owned)
                            .collect()
                    })
                    .unwrap_or_default()
            };
            WorkerCommandLine::find(&words("command"), &words("args")).is_some()
        };
        let any_worker = containers.iter().any(runs_worker);
        let cluster_tls = self.mounts_cluster_tls();
        for (i, container) in containers.iter_mut().enumerate() {
            // The worker containers get the address (and the certificates); with none
            // recognisable (a custom entrypoint), the first container, as dask-kubernetes
            // does.
            let wanted = if any_worker {
                runs_worker(container)
            } else {
                i == 0
            };
            if wanted && let Some(map) = container.as_object_mut() {
                set_env(map, SCHEDULER_ADDRESS_ENV, &address, true);
                if cluster_tls {
                    tls::mount(map);
                }
            }
        }
        let spec = pod_map
            .get_mut("spec")
            .ok_or_else(|| invalid_worker(origin, "spec is missing"))?;
        if let Some(spec_map) = spec.as_object_mut() {
            if cluster_tls {
                add_volume(spec_map, tls::pod_volume(&self.name));
            }
            no_token_unless_asked(spec_map);
        }
        let defaulted = apply_worker_defaults(spec, "spec", PodSpecRules::BARE_POD, &self.defaults)
            .map_err(|source| Error::WorkerDefaults {
                origin: origin.clone(),
                source: Box::new(source),
            })?;
        Ok(WorkerPod {
            pod,
            warnings: defaulted.warnings,
        })
    }

    /// The manifests `dask-kube render` prints: scheduler pod, Service, one worker pod, the
    /// stored worker template and (with the cluster's own TLS) its Secret, whose keys exist
    /// only once the cluster starts; owner uids shown as a placeholder.
    pub fn render(&self) -> Result<Vec<Value>> {
        let owner = Owner {
            name: self.name.clone(),
            uid: UID_PLACEHOLDER.to_owned(),
        };
        let worker = self.worker_pod()?.pod;
        if self.external_scheduler.is_some() {
            return Ok(vec![worker]);
        }
        let mut owned_worker = worker.clone();
        set_owner(&mut owned_worker, &owner);
        let mut objects = vec![
            self.scheduler_pod()?,
            self.service(Some(&owner)),
            owned_worker,
            crate::stored_template::pod_template(self, &worker, &owner)?,
        ];
        if self.mounts_cluster_tls() {
            objects.push(tls::secret_manifest(
                &self.name,
                &self.namespace,
                &self.user,
                &owner,
                json!({
                    tls::CA_KEY: SECRET_PLACEHOLDER,
                    tls::CERT_KEY: SECRET_PLACEHOLDER,
                    tls::KEY_KEY: SECRET_PLACEHOLDER,
                }),
            ));
        }
        Ok(objects)
    }
}

/// What `render` shows for the certificates, which are made when the cluster starts.
pub const SECRET_PLACEHOLDER: &str = "<made when the cluster starts>";

/// The `startupProbe` of a scheduler whose HTTP server listens on its pod's loopback: its
/// `/health`, asked from inside the container by the image's Python (`python3`, else
/// `python`: every Dask image has one of them).
fn scheduler_health_probe() -> Value {
    json!({
        "exec": {"command": [
            "sh", "-c",
            format!("exec \"$(command -v python3 || command -v python)\" -c \"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{DASHBOARD_PORT}/health', timeout=1)\""),
        ]},
        "periodSeconds": 2,
        "timeoutSeconds": 2,
        // A scheduler that does not listen within 30 minutes is killed (and, with
        // restartPolicy Never, the cluster's start fails saying so).
        "failureThreshold": 900,
    })
}

/// Adds (or replaces, by name) a pod volume.
fn add_volume(spec: &mut Map<String, Value>, volume: Value) {
    let name = volume.get("name").cloned();
    let volumes = spec.entry("volumes").or_insert_with(|| json!([]));
    if !volumes.is_array() {
        *volumes = json!([]);
    }
    if let Some(volumes) = volumes.as_array_mut() {
        volumes.retain(|v| v.get("name") != name.as_ref());
        volumes.push(volume);
    }
}

/// `automountServiceAccountToken: false` unless the template says otherwise: a scheduler
/// or worker does not talk to the API server, and a mounted token is what code sent to
/// the cluster (`client.run_on_scheduler`, any task) would take. A template whose code
/// needs the token says `automountServiceAccountToken: true`.
fn no_token_unless_asked(spec: &mut Map<String, Value>) {
    if spec
        .get("automountServiceAccountToken")
        .is_none_or(Value::is_null)
    {
        spec.insert("automountServiceAccountToken".into(), json!(false));
    }
}

/// The label selector of a cluster's pods of `component`.
pub fn selector(cluster: &str, component: &str) -> String {
    format!(
        "{}={cluster},{}={component}",
        labels::CLUSTER_NAME,
        labels::COMPONENT
    )
}

/// Points a pod or Service at its owner.
pub fn set_owner(object: &mut Value, owner: &Owner) {
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("ownerReferences".into(), json!([owner.reference()]));
    }
}

/// Classic's `clean_pod_template(pod, apply_default_affinity=mode, pod_type=component)` on
/// a whole pod: its `spec` gets the `component` pool's two dedicated tolerations (each once)
/// and the node affinity `mode` asks for (`dask_worker_spec::apply_dedicated_pool`).
pub fn default_affinity(
    pod: &mut Value,
    component: DaskComponent,
    mode: DefaultAffinity,
) -> Result<()> {
    let what = match component {
        DaskComponent::Scheduler => "scheduler",
        DaskComponent::Worker => "worker",
    };
    let spec = pod.get_mut("spec").ok_or_else(|| Error::InvalidTemplate {
        what,
        origin: "the pod".into(),
        reason: "spec is missing".into(),
    })?;
    apply_dedicated_pool(spec, "spec", component, mode).map_err(|e| Error::InvalidTemplate {
        what,
        origin: "the pod".into(),
        reason: e.to_string(),
    })?;
    Ok(())
}

/// Sets an env var on a container; `replace` decides whether an existing one is overwritten.
/// The one env setter: the scheduler's own variables here, a request's env
/// ([`crate::request`]).
pub(crate) fn set_env(container: &mut Map<String, Value>, name: &str, value: &str, replace: bool) {
    let env = container.entry("env").or_insert_with(|| json!([]));
    if !env.is_array() {
        *env = json!([]);
    }
    if let Some(env) = env.as_array_mut() {
        let existing = env
            .iter_mut()
            .find(|e| e.get("name").and_then(Value::as_str) == Some(name));
        match existing {
            Some(e) if replace => *e = json!({"name": name, "value": value}),
            Some(_) => {}
            None => env.push(json!({"name": name, "value": value})),
        }
    }
}

fn invalid_scheduler(origin: &str, reason: &str) -> Error {
    Error::InvalidTemplate {
        what: "scheduler",
        origin: origin.to_owned(),
        reason: reason.to_owned(),
    }
}

fn invalid_worker(origin: &str, reason: &str) -> Error {
    Error::InvalidTemplate {
        what: "worker",
        origin: origin.to_owned(),
        reason: reason.to_owned(),
    }
}

/// Converts a manifest to the typed pod the client sends.
pub fn to_pod(value: Value) -> Result<Pod> {
    serde_json::from_value(value).map_err(|e| Error::InvalidTemplate {
        what: "worker",
        origin: "generated pod".into(),
        reason: e.to_string(),
    })
}

/// Converts a manifest to the typed Service the client sends.
pub fn to_service(value: Value) -> Result<Service> {
    serde_json::from_value(value).map_err(|e| Error::InvalidTemplate {
        what: "scheduler",
        origin: "generated service".into(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    const WORKER_SPEC: &str = include_str!("../tests/fixtures/worker-spec.yml");

    fn spec() -> ClusterSpec {
        ClusterSpec {
            name: "dask-alice-0a1b2c3d4e".into(),
            namespace: "team".into(),
            user: "alice".into(),
            worker: PodTemplate::from_yaml(WORKER_SPEC, "worker-spec.yml", "worker").unwrap(),
            scheduler: None,
            scheduler_options: vec!["--idle-timeout".into(), "3600".into()],
            defaults: WorkerDefaults::default(),
            external_scheduler: None,
            external_scheduler_api: None,
            adaptive_target_duration: None,
            service_type: ServiceType::ClusterIP,
            tls: TlsMode::Off,
        }
    }

    fn secure() -> ClusterSpec {
        ClusterSpec {
            tls: TlsMode::ClusterCa,
            ..spec()
        }
    }

    fn mounts(container: &Value) -> Vec<&Value> {
        container["volumeMounts"]
            .as_array()
            .map(|m| m.iter().collect())
            .unwrap_or_default()
    }

    fn env_value<'a>(container: &'a Value, name: &str) -> Option<&'a Value> {
        container["env"]
            .as_array()?
            .iter()
            .find(|e| e["name"] == name)
    }

    #[test]
    fn worker_pod_has_cluster_metadata_and_address() {
        let pod = spec().worker_pod().unwrap().pod;
        assert_eq!(
            pod["metadata"]["generateName"],
            "dask-alice-0a1b2c3d4e-worker-"
        );
        assert_eq!(pod["metadata"]["namespace"], "team");
        assert!(pod["metadata"].get("name").is_none());
        let labels = &pod["metadata"]["labels"];
        assert_eq!(labels["dask.org/cluster-name"], "dask-alice-0a1b2c3d4e");
        assert_eq!(labels["dask.org/component"], "worker");
        assert_eq!(labels["app"], "dask");
        assert_eq!(labels["user"], "alice");
        let container = &pod["spec"]["containers"][0];
        assert_eq!(
            env_value(container, SCHEDULER_ADDRESS_ENV).unwrap()["value"],
            "tcp://dask-alice-0a1b2c3d4e-scheduler.team:8786"
        );
    }

    #[test]
    fn worker_pod_gets_the_shared_defaults() {
        let pod = spec().worker_pod().unwrap().pod;
        let container = &pod["spec"]["containers"][0];
        // Worker name = pod name, through the downward API.
        let args: Vec<&str> = container["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert!(
            args.windows(2)
                .any(|w| w == ["--name", "$(DASK_WORKER_NAME)"]),
            "{args:?}"
        );
        assert_eq!(
            env_value(container, "DASK_WORKER_NAME").unwrap()["valueFrom"]["fieldRef"]["fieldPath"],
            "metadata.name"
        );
        assert_eq!(pod["spec"]["restartPolicy"], "Never");
        assert_eq!(pod["spec"]["tolerations"].as_array().unwrap().len(), 2);
        assert_eq!(container["resources"]["limits"]["memory"], "6G");
    }

    #[test]
    fn defaulting_is_a_fixed_point_so_the_policy_changes_nothing() {
        let pod = spec().worker_pod().unwrap().pod;
        let mut again = pod["spec"].clone();
        let outcome = apply_worker_defaults(
            &mut again,
            "spec",
            PodSpecRules::BARE_POD,
            &WorkerDefaults::default(),
        )
        .unwrap();
        assert!(!outcome.changed);
        assert_eq!(again, pod["spec"]);
    }

    #[test]
    fn existing_scheduler_address_env_is_replaced() {
        let mut s = spec();
        s.worker.pod["spec"]["containers"][0]["env"] = json!([{"name": SCHEDULER_ADDRESS_ENV, "value": "tcp://old:8786"}, {"name": "KEEP", "value": "1"}]);
        let pod = s.worker_pod().unwrap().pod;
        let container = &pod["spec"]["containers"][0];
        assert_eq!(
            env_value(container, SCHEDULER_ADDRESS_ENV).unwrap()["value"],
            "tcp://dask-alice-0a1b2c3d4e-scheduler.team:8786"
        );
        assert_eq!(env_value(container, "KEEP").unwrap()["value"], "1");
        assert_eq!(
            container["env"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["name"] == SCHEDULER_ADDRESS_ENV)
                .count(),
            1
        );
    }

    #[test]
    fn external_scheduler_address_goes_to_workers() {
        let mut s = spec();
        s.external_scheduler = Some("tcp://10.0.0.5:8786".into());
        let pod = s.worker_pod().unwrap().pod;
        assert_eq!(
            env_value(&pod["spec"]["containers"][0], SCHEDULER_ADDRESS_ENV).unwrap()["value"],
            "tcp://10.0.0.5:8786"
        );
        assert_eq!(s.render().unwrap().len(), 1);
    }

    #[test]
    fn mismatched_template_is_a_clear_error() {
        let mut s = spec();
        s.worker.pod["spec"]["containers"][0]["resources"]["limits"]["memory"] = json!("4G");
        let err = s.worker_pod().unwrap_err();
        assert_eq!(err.exit_code(), crate::error::exit::USAGE);
        assert!(err.to_string().contains("--memory-limit"), "{err}");
    }

    #[test]
    fn adaptive_target_duration_reaches_the_scheduler_only() {
        let s = ClusterSpec {
            adaptive_target_duration: Some("500ms".into()),
            ..spec()
        };
        let pod = s.scheduler_pod().unwrap();
        assert_eq!(
            env_value(&pod["spec"]["containers"][0], TARGET_DURATION_ENV),
            Some(&json!({"name": TARGET_DURATION_ENV, "value": "500ms"}))
        );
        let worker = s.worker_pod().unwrap().pod;
        assert_eq!(
            env_value(&worker["spec"]["containers"][0], TARGET_DURATION_ENV),
            None
        );
    }

    #[rstest::rstest]
    #[case::milliseconds("500ms", true)]
    #[case::fractional_seconds("0.5s", true)]
    #[case::bare_seconds("2", true)]
    #[case::minutes("1m", true)]
    #[case::zero("0s", false)]
    #[case::negative("-1s", false)]
    #[case::unknown_unit("5 parsecs", false)]
    #[case::empty("", false)]
    fn timedeltas(#[case] text: &str, #[case] valid: bool) {
        assert_eq!(validate_timedelta(text).is_ok(), valid, "{text}");
    }

    #[rstest::rstest]
    #[case::milliseconds("500ms", 0.5)]
    #[case::bare_seconds("90", 90.0)]
    #[case::minutes("30m", 1800.0)]
    #[case::hours_spelled_out(" 2 hours ", 7200.0)]
    #[case::microseconds("250us", 0.000_25)]
    fn timedelta_seconds_read_as_dask_does(#[case] text: &str, #[case] seconds: f64) {
        let read = timedelta_seconds(text).unwrap();
        assert!((read - seconds).abs() < 1e-9, "{text}: {read}");
    }

    #[test]
    fn scheduler_pod_from_the_worker_image() {
        let pod = spec().scheduler_pod().unwrap();
        assert_eq!(pod["metadata"]["name"], "dask-alice-0a1b2c3d4e");
        assert_eq!(pod["metadata"]["labels"]["dask.org/component"], "scheduler");
        assert_eq!(pod["spec"]["restartPolicy"], "Never");
        let c = &pod["spec"]["containers"][0];
        assert_eq!(c["image"], "ghcr.io/dask/dask:latest");
        assert_eq!(
            c["args"],
            json!([
                "dask",
                "scheduler",
                "--port",
                "8786",
                "--dashboard-address",
                ":8787",
                "--idle-timeout",
                "3600"
            ])
        );
        assert_eq!(env_value(c, ROUTES_ENV).unwrap()["value"], ROUTES);
        assert!(
            c.get("resources").is_none(),
            "a worker's resources are not the scheduler's"
        );
        assert_eq!(
            pod["spec"]["tolerations"],
            json!([
                {"key": "k8s.dask.org/dedicated", "operator": "Equal", "value": "scheduler", "effect": "NoSchedule"},
                {"key": "k8s.dask.org_dedicated", "operator": "Equal", "value": "scheduler", "effect": "NoSchedule"},
            ]),
            "the scheduler pool's tolerations, as classic's clean_pod_template(pod_type=\"scheduler\")"
        );
        assert_eq!(c["readinessProbe"]["tcpSocket"]["port"], 8786);
        to_pod(pod).unwrap();
    }

    /// Classic's `apply_default_affinity`, for both pods: `preferred` (the default) and
    /// `required` keep each on its pool's nodes (`k8s.dask.org/node-purpose`), `none` adds
    /// no affinity (the tolerations stay).
    #[rstest]
    #[case::preferred(
        DefaultAffinity::Preferred,
        Some("preferredDuringSchedulingIgnoredDuringExecution")
    )]
    #[case::required(
        DefaultAffinity::Required,
        Some("requiredDuringSchedulingIgnoredDuringExecution")
    )]
    #[case::none(DefaultAffinity::None, None)]
    fn both_pods_get_the_affinity_mode(#[case] mode: DefaultAffinity, #[case] term: Option<&str>) {
        let s = ClusterSpec {
            defaults: WorkerDefaults {
                apply_default_affinity: mode,
                ..WorkerDefaults::default()
            },
            ..spec()
        };
        let scheduler = s.scheduler_pod().unwrap();
        let worker = s.worker_pod().unwrap().pod;
        for (pod, component) in [(&scheduler, "scheduler"), (&worker, "worker")] {
            let node_affinity = &pod["spec"]["affinity"]["nodeAffinity"];
            match term {
                Some(term) => {
                    let text = node_affinity[term].to_string();
                    assert!(
                        text.contains("k8s.dask.org/node-purpose") && text.contains(component),
                        "{component}: {node_affinity}"
                    );
                }
                None => assert!(node_affinity.is_null(), "{component}: {node_affinity}"),
            }
            assert_eq!(pod["spec"]["tolerations"][0]["value"], component);
        }
    }

    /// Classic derives the scheduler pod from the whole worker template: volumes, mounts and
    /// placement are kept; what only a worker uses is not.
    #[test]
    fn the_derived_scheduler_keeps_the_template_but_not_the_worker() {
        let mut s = spec();
        let template = &mut s.worker.pod;
        template["spec"]["volumes"] = json!([{"name": "data", "emptyDir": {}}]);
        template["spec"]["nodeSelector"] = json!({"pool": "dask"});
        template["spec"]["tolerations"] = json!([{"key": "team", "operator": "Exists"}]);
        let c = &mut template["spec"]["containers"][0];
        c["volumeMounts"] = json!([{"name": "data", "mountPath": "/data"}]);
        c["ports"] = json!([{"name": "http-dashboard", "containerPort": 8788}]);
        c["readinessProbe"] = json!({"httpGet": {"port": 8788, "path": "/health"}});
        c["env"] =
            json!([{"name": "KEEP", "value": "1"}, {"name": SCHEDULER_ADDRESS_ENV, "value": "x"}]);
        template["spec"]["containers"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "sidecar", "image": "busybox"}));
        let pod = s.scheduler_pod().unwrap();
        assert_eq!(pod["spec"]["volumes"][0]["name"], "data");
        assert_eq!(pod["spec"]["nodeSelector"]["pool"], "dask");
        assert_eq!(pod["spec"]["tolerations"][0]["key"], "team");
        let containers = pod["spec"]["containers"].as_array().unwrap();
        assert_eq!(containers.len(), 1, "only the scheduler container");
        let c = &containers[0];
        assert_eq!(c["name"], SCHEDULER_CONTAINER);
        assert_eq!(c["volumeMounts"][0]["mountPath"], "/data");
        assert_eq!(c["args"][1], "scheduler");
        assert_eq!(
            c["ports"][0]["containerPort"], SCHEDULER_PORT,
            "the worker's ports are not the scheduler's"
        );
        assert_eq!(c["readinessProbe"]["tcpSocket"]["port"], SCHEDULER_PORT);
        assert!(env_value(c, "KEEP").is_some());
        assert!(env_value(c, SCHEDULER_ADDRESS_ENV).is_none());
    }

    #[test]
    fn the_service_is_named_as_the_operator_names_it_and_of_the_asked_type() {
        let s = ClusterSpec {
            service_type: ServiceType::LoadBalancer,
            ..spec()
        };
        let svc = s.service(None);
        assert_eq!(svc["metadata"]["name"], "dask-alice-0a1b2c3d4e-scheduler");
        assert_eq!(svc["spec"]["type"], "LoadBalancer");
    }

    #[test]
    fn scheduler_template_is_used_and_completed() {
        let mut s = spec();
        s.scheduler = Some(PodTemplate::from_yaml(
            "kind: Pod\nmetadata:\n  labels: {team: x}\nspec:\n  containers:\n  - name: s\n    image: custom/sched:1\n    args: [dask, scheduler, --port, '8786']\n    env: [{name: DASK_DISTRIBUTED__SCHEDULER__HTTP__ROUTES, value: '[\"x\"]'}]\n",
            "sched.yml", "scheduler").unwrap());
        let pod = s.scheduler_pod().unwrap();
        let c = &pod["spec"]["containers"][0];
        assert_eq!(c["image"], "custom/sched:1");
        assert_eq!(c["args"], json!(["dask", "scheduler", "--port", "8786"]));
        assert_eq!(
            env_value(c, ROUTES_ENV).unwrap()["value"],
            "[\"x\"]",
            "the user's routes are kept"
        );
        assert_eq!(pod["metadata"]["labels"]["team"], "x");
        assert_eq!(pod["metadata"]["labels"]["dask.org/component"], "scheduler");
    }

    #[test]
    fn service_selects_the_scheduler_and_is_owned_by_it() {
        let owner = Owner {
            name: "dask-alice-0a1b2c3d4e".into(),
            uid: "u-1".into(),
        };
        let svc = spec().service(Some(&owner));
        assert_eq!(svc["metadata"]["name"], "dask-alice-0a1b2c3d4e-scheduler");
        assert_eq!(svc["spec"]["selector"]["dask.org/component"], "scheduler");
        assert_eq!(svc["spec"]["ports"][0]["name"], "tcp-comm");
        assert_eq!(svc["spec"]["ports"][1]["port"], 8787);
        assert_eq!(
            svc["metadata"]["ownerReferences"][0],
            json!({"apiVersion": "v1", "kind": "Pod", "name": "dask-alice-0a1b2c3d4e", "uid": "u-1", "blockOwnerDeletion": true})
        );
        to_service(svc).unwrap();
    }

    #[rstest]
    #[case::scheduler(0, "Pod")]
    #[case::service(1, "Service")]
    #[case::worker(2, "Pod")]
    #[case::stored_template(3, "PodTemplate")]
    #[case::certificates(4, "Secret")]
    fn render_lists_every_object(#[case] index: usize, #[case] kind: &str) {
        let objects = secure().render().unwrap();
        assert_eq!(objects.len(), 5);
        assert_eq!(objects[index]["kind"], kind);
        if index > 0 {
            assert_eq!(
                objects[index]["metadata"]["ownerReferences"][0]["uid"],
                UID_PLACEHOLDER
            );
        }
    }

    #[test]
    fn without_tls_there_is_no_secret_to_render() {
        let kinds: Vec<Value> = spec()
            .render()
            .unwrap()
            .iter()
            .map(|o| o["kind"].clone())
            .collect();
        assert_eq!(kinds, ["Pod", "Service", "Pod", "PodTemplate"]);
    }

    #[test]
    fn the_stored_template_is_the_worker_pod() {
        let objects = secure().render().unwrap();
        let stored =
            crate::stored_template::read("dask-alice-0a1b2c3d4e", "team", &objects[3]).unwrap();
        assert_eq!(stored.worker_pod, secure().worker_pod().unwrap().pod);
        assert_eq!(stored.tls, TlsMode::ClusterCa);
    }

    /// With the cluster's own TLS both pods mount its Secret read-only and carry Dask's TLS
    /// settings for every role; the workers reach the scheduler at a `tls://` address.
    #[test]
    fn with_cluster_tls_both_pods_mount_the_certificates() {
        let s = secure();
        let scheduler = s.scheduler_pod().unwrap();
        let worker = s.worker_pod().unwrap().pod;
        for pod in [&scheduler, &worker] {
            assert_eq!(
                pod["spec"]["volumes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|v| v["name"] == tls::VOLUME_NAME)
                    .collect::<Vec<_>>(),
                [
                    &json!({"name": "dask-kube-tls", "secret": {"secretName": "dask-alice-0a1b2c3d4e-tls"}})
                ]
            );
            let c = &pod["spec"]["containers"][0];
            assert!(
                mounts(c).contains(&&json!({"name": "dask-kube-tls", "mountPath": "/etc/dask-kube/tls", "readOnly": true})),
                "{c}"
            );
            for (name, value) in tls::pod_env() {
                assert_eq!(
                    env_value(c, &name).unwrap()["value"],
                    value.as_str(),
                    "{name}"
                );
            }
        }
        assert_eq!(
            env_value(&worker["spec"]["containers"][0], SCHEDULER_ADDRESS_ENV).unwrap()["value"],
            "tls://dask-alice-0a1b2c3d4e-scheduler.team:8786"
        );
        to_pod(scheduler).unwrap();
        to_pod(worker).unwrap();
    }

    /// A sidecar that does not run the worker gets neither the address nor the keys.
    #[test]
    fn a_sidecar_gets_no_certificates() {
        let mut s = secure();
        s.worker.pod["spec"]["containers"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "sidecar", "image": "busybox", "args": ["sleep", "1d"]}));
        let worker = s.worker_pod().unwrap().pod;
        let sidecar = &worker["spec"]["containers"][1];
        assert!(mounts(sidecar).is_empty(), "{sidecar}");
        assert!(env_value(sidecar, tls::CA_FILE_ENV).is_none());
    }

    /// With any TLS the scheduler's HTTP server (unauthenticated in Dask: it retires workers
    /// and, with --jupyter, runs code) listens on its pod's loopback only: no Service port,
    /// no container port, and its startup is probed from inside the container (a TCP probe
    /// of the TLS port would log a failed handshake every two seconds).
    #[rstest]
    #[case::cluster_ca(TlsMode::ClusterCa, true)]
    #[case::provided(TlsMode::Provided, true)]
    #[case::off(TlsMode::Off, false)]
    fn the_http_port_is_private_with_tls(#[case] tls: TlsMode, #[case] private: bool) {
        let s = ClusterSpec { tls, ..spec() };
        let scheduler = s.scheduler_pod().unwrap();
        let c = &scheduler["spec"]["containers"][0];
        let dashboard = if private { "127.0.0.1:8787" } else { ":8787" };
        assert_eq!(c["args"][5], dashboard, "{}", c["args"]);
        let service_ports: Vec<Value> = s.service(None)["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["port"].clone())
            .collect();
        assert_eq!(service_ports.contains(&json!(8787)), !private);
        let container_ports: Vec<Value> = c["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["containerPort"].clone())
            .collect();
        assert_eq!(container_ports.contains(&json!(8787)), !private);
        assert_eq!(c["readinessProbe"].is_null(), private);
        assert_eq!(!c["startupProbe"].is_null(), private);
        if private {
            let probe = c["startupProbe"]["exec"]["command"].to_string();
            assert!(probe.contains("http://127.0.0.1:8787/health"), "{probe}");
        }
        let scheme = if private { "tls" } else { "tcp" };
        assert!(s.worker_scheduler_address().starts_with(scheme));
    }

    /// A scheduler template with its own command decides where it listens: no probe is
    /// guessed for it (a wrong startup probe would kill it).
    #[test]
    fn a_scheduler_template_with_its_own_command_gets_no_startup_probe() {
        let mut s = secure();
        s.scheduler = Some(
            PodTemplate::from_yaml(
                "kind: Pod\nspec:\n  containers:\n  - name: s\n    image: custom/sched:1\n    args: [dask, scheduler, --dashboard-address, ':9999']\n",
                "sched.yml",
                "scheduler",
            )
            .unwrap(),
        );
        let c = &s.scheduler_pod().unwrap()["spec"]["containers"][0];
        assert!(
            c["startupProbe"].is_null() && c["readinessProbe"].is_null(),
            "{c}"
        );
    }

    /// Neither pod mounts a ServiceAccount token unless the template asks for one.
    #[rstest]
    #[case::absent(None, false)]
    #[case::asked_for(Some(true), true)]
    #[case::refused(Some(false), false)]
    fn no_token_is_mounted_unless_the_template_asks(
        #[case] template: Option<bool>,
        #[case] mounted: bool,
    ) {
        let mut s = secure();
        if let Some(asked) = template {
            s.worker.pod["spec"]["automountServiceAccountToken"] = json!(asked);
        }
        let scheduler = s.scheduler_pod().unwrap();
        let worker = s.worker_pod().unwrap().pod;
        for pod in [&scheduler, &worker] {
            assert_eq!(pod["spec"]["automountServiceAccountToken"], mounted);
        }
    }

    #[test]
    fn the_defaults_stay_a_fixed_point_with_tls() {
        let pod = secure().worker_pod().unwrap().pod;
        let mut again = pod["spec"].clone();
        let outcome = apply_worker_defaults(
            &mut again,
            "spec",
            PodSpecRules::BARE_POD,
            &WorkerDefaults::default(),
        )
        .unwrap();
        assert!(!outcome.changed);
    }
}
