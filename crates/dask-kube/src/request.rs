//! A cluster as a shell asks for it ([`ClusterRequest`]: the CLI's flags, Python's keyword
//! arguments, an operator's resource) and its one resolution ([`ClusterRequest::resolve`])
//! against the Dask config into a [`ResolvedCluster`]: the templates read once (`${VAR}`
//! expanded as classic dask-kubernetes does), the environment set, the name formatted
//! once (one uuid), counts and the adapt range within `kubernetes.count.max`, durations
//! checked. Pure apart from reading template files; every rule is tested with tables.

use crate::adapt::{AdaptPolicy, AdaptTuning};
use crate::apiserver::CreateLimits;
use crate::cluster::Access;
use crate::config::{DaskConfig, KubeSettings};
use crate::manifests::{self, ClusterSpec, ServiceType, set_env};
use crate::names::{self, NameVars};
use crate::scaler::{CountCap, cap_count};
use crate::template::PodTemplate;
use crate::{Error, Result};
use dask_worker_spec::WorkerDefaults;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// The worker command of a pod made from an image (operator-era `image=`) when none is
/// given. The operator's default is `dask-worker`, a script `distributed` no longer ships.
pub const DEFAULT_WORKER_COMMAND: [&str; 2] = ["dask", "worker"];

/// Bound on the scheduler pod becoming Running, unless `kubernetes.resource-timeout` or the
/// request says otherwise (an image pull on a fresh node takes a while).
pub const DEFAULT_SCHEDULER_START_TIMEOUT: Duration = Duration::from_secs(180);

/// Where a pod template comes from.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum TemplateSource {
    /// A YAML file (`-f worker-spec.yml`, `KubeCluster("worker-spec.yml")`); `$VAR` and
    /// `${VAR}` in its strings are expanded from the environment, as classic's `from_yaml`.
    File(PathBuf),
    /// A pod given as a value (a Python dict or pod object); used as given.
    Pod(Value),
}

/// A worker command as the operator's `worker_command=` takes it: a string (split on
/// whitespace) or a list.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum WorkerCommand {
    /// `"dask worker"`.
    Line(String),
    /// `["dask", "worker"]`.
    Argv(Vec<String>),
}

impl WorkerCommand {
    fn argv(&self) -> Vec<String> {
        match self {
            WorkerCommand::Line(line) => line.split_whitespace().map(str::to_owned).collect(),
            WorkerCommand::Argv(argv) => argv.clone(),
        }
    }
}

/// Adapting as asked for: the range (`None`: 0, and `kubernetes.count.max` or no cap) and
/// its tuning.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdaptRequest {
    /// Fewest workers.
    pub minimum: Option<u32>,
    /// Most workers.
    pub maximum: Option<u32>,
    /// Interval, wait count, cooldown, step.
    #[serde(flatten)]
    pub tuning: AdaptTuning,
    /// Adapt from this process (or its supervisor) even where the cluster's controller pod
    /// could (`--adapt-here`, Python's `in_cluster=False`).
    pub here: bool,
}

/// Classic dask-kubernetes' `apply_default_affinity`: the dedicated-pool node affinity
/// (`k8s.dask.org/node-purpose In [worker|scheduler]`) given to every pod.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum AffinityMode {
    /// Weight 100, so pods still run where no node has the label (classic's default).
    #[default]
    Preferred,
    /// Only on nodes with the label.
    Required,
    /// No affinity added.
    None,
}

impl TryFrom<String> for AffinityMode {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl std::str::FromStr for AffinityMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_lowercase().as_str() {
            "preferred" => Ok(AffinityMode::Preferred),
            "required" => Ok(AffinityMode::Required),
            "none" => Ok(AffinityMode::None),
            other => Err(Error::Usage(format!(
                "apply_default_affinity {other:?}: \"preferred\", \"required\" or \"none\""
            ))),
        }
    }
}

/// A cluster as asked for. Everything unset is settled by [`ClusterRequest::resolve`] from
/// the Dask config, then defaults; the CLI, the Python package and an operator only fill
/// this in.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterRequest {
    /// The worker pod template (else an image, else `kubernetes.worker-template-path`,
    /// `kubernetes.worker-template`, `kubernetes.image`).
    pub worker_template: Option<TemplateSource>,
    /// The scheduler pod template (else `kubernetes.scheduler-template`, else derived from
    /// the worker template as classic does).
    pub scheduler_template: Option<TemplateSource>,
    /// Operator-era: a worker pod running this image (`image=`, `--image`).
    pub image: Option<String>,
    /// Operator-era: that pod's container resources (`{"limits": {...}, "requests": {...}}`).
    pub resources: Option<Value>,
    /// Operator-era: that pod's command (default `dask worker`).
    pub worker_command: Option<WorkerCommand>,
    /// The cluster name, or a name template like `dask-{user}-{uuid}` (`kubernetes.name`).
    pub name: Option<String>,
    /// The namespace (`kubernetes.namespace`, else the credentials').
    pub namespace: Option<String>,
    /// Environment variables of the scheduler and the workers, over `kubernetes.env`.
    pub env: BTreeMap<String, String>,
    /// Workers to start (`kubernetes.count.start`, else 0); with `adapt`, its minimum.
    pub n_workers: Option<usize>,
    /// Adapt instead of a fixed count.
    pub adapt: Option<AdaptRequest>,
    /// The scheduler's `--idle-timeout` (`kubernetes.idle-timeout`).
    pub idle_timeout: Option<String>,
    /// The scheduler's `distributed.adaptive.target-duration`.
    pub target_duration: Option<String>,
    /// Extra `dask scheduler` options.
    pub scheduler_options: Vec<String>,
    /// Start Jupyter on the scheduler (`--jupyter`; operator-era `jupyter=`).
    pub jupyter: bool,
    /// A scheduler that runs elsewhere (no scheduler pod, no Service).
    pub scheduler_address: Option<String>,
    /// That scheduler's HTTP server as `host:port` (default: its host, port 8787).
    pub scheduler_api_address: Option<String>,
    /// The Service's type (`kubernetes.scheduler-service-type`, else `ClusterIP`).
    pub scheduler_service_type: Option<String>,
    /// Seconds the scheduler pod may take to run (`kubernetes.resource-timeout`).
    pub resource_timeout: Option<f64>,
    /// The dedicated-pool node affinity (`kubernetes.apply-default-affinity`, else
    /// preferred, as classic).
    pub apply_default_affinity: Option<AffinityMode>,
    /// Most pod creations/deletions in flight (`kubernetes.max-in-flight`).
    pub max_in_flight: Option<u32>,
    /// How the scheduler is reached from here.
    pub access: Access,
    /// Local port of the scheduler address when port-forwarding (0 picks one).
    pub local_port: u16,
    /// Local port of the dashboard when port-forwarding (0 picks one;
    /// `scheduler_forward_port=`).
    pub dashboard_port: u16,
}

/// A request settled: what the manifests are made of, and what to do with them.
#[derive(Debug, Clone)]
pub struct ResolvedCluster {
    /// Name, namespace (empty: the credentials' default), templates (environment set),
    /// scheduler settings: what [`ClusterSpec::render`] makes the objects of.
    pub spec: ClusterSpec,
    /// Workers to start with the scheduler (the adapt minimum when adapting), within
    /// `kubernetes.count.max`.
    pub workers: usize,
    /// The adapt policy, its maximum within `kubernetes.count.max`.
    pub adapt: Option<AdaptPolicy>,
    /// Adapt from this process (or its supervisor), not the controller pod.
    pub adapt_here: bool,
    /// Set when `kubernetes.count.max` lowered the workers or the adapt maximum.
    pub capped: Option<CountCap>,
    /// `kubernetes.count.max`.
    pub count_max: Option<u32>,
    /// Pacing of creations and deletions.
    pub limits: CreateLimits,
    /// `distributed.dashboard.link`, formatted once the scheduler is reachable.
    pub dashboard_link: String,
    /// `kubernetes.controller-image`.
    pub controller_image: String,
    /// Bound on the scheduler pod becoming Running.
    pub scheduler_start_timeout: Duration,
    /// How the scheduler is reached, and on which local ports.
    pub access: Access,
    /// Local port of the scheduler address.
    pub local_port: u16,
    /// Local port of the dashboard.
    pub dashboard_port: u16,
    /// The environment `{VAR}` fields are formatted with.
    pub env: Vec<(String, String)>,
    /// What the worker defaults left alone, and why.
    pub warnings: Vec<String>,
}

impl ResolvedCluster {
    /// The manifests `up` creates (scheduler pod, Service, one worker pod; owner uids as a
    /// placeholder), in `namespace` when the request left it to the credentials.
    pub fn render(&self, namespace: &str) -> Result<Vec<Value>> {
        let mut spec = self.spec.clone();
        if spec.namespace.is_empty() {
            namespace.clone_into(&mut spec.namespace);
        }
        spec.render()
    }
}

impl ClusterRequest {
    /// Settles the request against `config` (the Dask config of this process: files and
    /// `DASK_*` variables, or Python's `dask.config`), with `vars` for the name template.
    /// Reads template files; contacts no cluster.
    ///
    /// # Example
    /// ```
    /// use dask_kube::{ClusterRequest, DaskConfig, NameVars, TemplateSource};
    /// let request = ClusterRequest {
    ///     worker_template: Some(TemplateSource::Pod(serde_json::json!({"spec": {"containers": [
    ///         {"name": "w", "image": "ghcr.io/dask/dask", "args": ["dask", "worker", "--nthreads", "1", "--memory-limit", "1GB"]}]}}))),
    ///     name: Some("demo".into()),
    ///     n_workers: Some(2),
    ///     ..Default::default()
    /// };
    /// let resolved = request.resolve(&DaskConfig::default(), &NameVars::default()).unwrap();
    /// assert_eq!(resolved.spec.name, "demo");
    /// assert_eq!(resolved.workers, 2);
    /// let objects = resolved.render("default").unwrap();
    /// assert_eq!(objects[1]["kind"], "Service");
    /// ```
    pub fn resolve(&self, config: &DaskConfig, vars: &NameVars) -> Result<ResolvedCluster> {
        let settings = config.kube_settings()?;
        let env = config.env();
        let mut worker = self.worker_template(&settings, env)?;
        let mut scheduler = self.scheduler_template(&settings, env)?;
        let mut pod_env = settings.env.clone();
        pod_env.extend(self.env.clone());
        set_first_container_env(&mut worker, &pod_env)?;
        if let Some(s) = scheduler.as_mut() {
            set_first_container_env(s, &pod_env)?;
        }
        let name = names::cluster_name(
            self.name.as_deref().unwrap_or(&settings.name_template),
            vars,
        )?;
        let namespace = self
            .namespace
            .clone()
            .or_else(|| settings.namespace.clone())
            .unwrap_or_default();
        let adaptive_target_duration = self
            .target_duration
            .clone()
            .or_else(|| settings.adaptive_target_duration.clone());
        if let Some(duration) = &adaptive_target_duration {
            manifests::validate_timedelta(duration)
                .map_err(|reason| Error::Usage(format!("adaptive target duration: {reason}")))?;
        }
        let mut scheduler_options = self.scheduler_options.clone();
        if let Some(timeout) = self.idle_timeout.clone().or(settings.idle_timeout.clone()) {
            manifests::validate_timedelta(&timeout)
                .map_err(|reason| Error::Usage(format!("idle timeout: {reason}")))?;
            // An explicit scheduler option wins over the setting.
            if !manifests::has_idle_timeout(&scheduler_options) {
                scheduler_options.extend(["--idle-timeout".to_owned(), timeout]);
            }
        }
        if self.jupyter && !scheduler_options.iter().any(|o| o == "--jupyter") {
            scheduler_options.push("--jupyter".to_owned());
        }
        let service_type: ServiceType = self
            .scheduler_service_type
            .as_deref()
            .unwrap_or(&settings.scheduler_service_type)
            .parse()?;
        let affinity = match self.apply_default_affinity {
            Some(mode) => mode,
            None => settings.apply_default_affinity.parse()?,
        };
        if self.scheduler_address.is_none() && self.scheduler_api_address.is_some() {
            return Err(Error::Usage(
                "a scheduler API address needs a scheduler address".into(),
            ));
        }
        let spec = ClusterSpec {
            name,
            namespace,
            user: names::user_label(&vars.user),
            worker,
            scheduler,
            scheduler_options,
            defaults: WorkerDefaults::default(),
            external_scheduler: self.scheduler_address.clone(),
            external_scheduler_api: self.scheduler_api_address.clone(),
            adaptive_target_duration,
            service_type,
            affinity,
        };
        // Everything is checked before any cluster is contacted: the objects are made once
        // here (in a placeholder namespace when it is the credentials' to say).
        let mut probe = spec.clone();
        if probe.namespace.is_empty() {
            probe.namespace = "default".into();
        }
        let warnings = probe.worker_pod()?.warnings;
        if probe.external_scheduler.is_none() {
            probe.scheduler_pod()?;
        }
        let (adapt, adapt_capped) = match &self.adapt {
            Some(a) => {
                let maximum = a.maximum.or(settings.count_max).unwrap_or(u32::MAX);
                let policy = AdaptPolicy::from_tuning(a.minimum.unwrap_or(0), maximum, &a.tuning)?;
                let (policy, capped) = cap_policy(policy, settings.count_max);
                (Some(policy), capped)
            }
            None => (None, None),
        };
        let wanted = match &adapt {
            Some(policy) => policy.minimum as usize,
            None => self.n_workers.or(settings.count_start).unwrap_or(0),
        };
        let (workers, workers_capped) = cap_count(wanted, settings.count_max);
        let scheduler_start_timeout = match self.resource_timeout.or(settings.resource_timeout) {
            Some(seconds) => Duration::try_from_secs_f64(seconds)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| {
                    Error::Usage(format!(
                        "resource_timeout must be a number of seconds > 0, not {seconds}"
                    ))
                })?,
            None => DEFAULT_SCHEDULER_START_TIMEOUT,
        };
        Ok(ResolvedCluster {
            spec,
            workers,
            adapt_here: self.adapt.as_ref().is_some_and(|a| a.here),
            adapt,
            capped: adapt_capped.or(workers_capped),
            count_max: settings.count_max,
            limits: CreateLimits::from_setting(self.max_in_flight.or(settings.max_in_flight)),
            dashboard_link: settings.dashboard_link,
            controller_image: settings.controller_image,
            scheduler_start_timeout,
            access: self.access,
            local_port: self.local_port,
            dashboard_port: self.dashboard_port,
            env: env.to_vec(),
            warnings,
        })
    }

    /// The worker template, by precedence: the request's template, its image, then
    /// `kubernetes.worker-template-path`, `kubernetes.worker-template`, `kubernetes.image`.
    fn worker_template(
        &self,
        settings: &KubeSettings,
        env: &[(String, String)],
    ) -> Result<PodTemplate> {
        if self.worker_template.is_some() && self.image.is_some() {
            return Err(Error::Usage(
                "both a worker pod template and an image name the worker pod: give one".into(),
            ));
        }
        if self.image.is_none() && (self.resources.is_some() || self.worker_command.is_some()) {
            return Err(Error::Usage(
                "resources= and worker_command= describe a worker made from image=; with a pod \
                 template, put them in the template"
                    .into(),
            ));
        }
        if let Some(source) = &self.worker_template {
            return template_of(source, "worker", "the worker template", env);
        }
        if let Some(image) = &self.image {
            return PodTemplate::from_value(
                image_worker_pod(image, self.resources.as_ref(), self.worker_command.as_ref())?,
                "image=",
                "worker",
            );
        }
        if let Some(path) = &settings.worker_template_path {
            return template_of(&TemplateSource::File(path.clone()), "worker", "", env);
        }
        if let Some(pod) = &settings.worker_template {
            let mut pod = pod.clone();
            expand_environment_variables(&mut pod, env);
            return PodTemplate::from_value(pod, "kubernetes.worker-template", "worker");
        }
        if let Some(image) = &settings.image {
            return PodTemplate::from_value(
                image_worker_pod(
                    image,
                    settings.resources.as_ref(),
                    settings.worker_command.as_ref(),
                )?,
                "kubernetes.image",
                "worker",
            );
        }
        Err(Error::NoWorkerTemplate)
    }

    fn scheduler_template(
        &self,
        settings: &KubeSettings,
        env: &[(String, String)],
    ) -> Result<Option<PodTemplate>> {
        if let Some(source) = &self.scheduler_template {
            return template_of(source, "scheduler", "the scheduler template", env).map(Some);
        }
        match &settings.scheduler_template {
            Some(pod) => {
                let mut pod = pod.clone();
                expand_environment_variables(&mut pod, env);
                PodTemplate::from_value(pod, "kubernetes.scheduler-template", "scheduler").map(Some)
            }
            None => Ok(None),
        }
    }
}

impl ClusterRequest {
    /// The request a `DaskCluster` resource of the dask-kubernetes operator makes (its
    /// client's `custom_cluster_spec=`, or an operator reconciling one): the name, the
    /// worker pod spec and replicas, the scheduler pod spec, the Service's type and the idle
    /// timeout. A worker command that names itself `$(DASK_WORKER_NAME)`, as upstream's
    /// generated specs do, gets that variable from the pod's name, as upstream's operator
    /// gives it.
    ///
    /// # Example
    /// ```
    /// use dask_kube::ClusterRequest;
    /// let request = ClusterRequest::from_dask_cluster(&serde_json::json!({
    ///     "apiVersion": "kubernetes.dask.org/v1", "kind": "DaskCluster",
    ///     "metadata": {"name": "demo"},
    ///     "spec": {"worker": {"replicas": 2, "spec": {"containers": [
    ///         {"name": "worker", "image": "ghcr.io/dask/dask", "args": ["dask", "worker"]}]}},
    ///              "scheduler": {"spec": {"containers": [
    ///         {"name": "scheduler", "image": "ghcr.io/dask/dask", "args": ["dask", "scheduler"]}]},
    ///                            "service": {"type": "NodePort"}}}})).unwrap();
    /// assert_eq!(request.name.as_deref(), Some("demo"));
    /// assert_eq!(request.n_workers, Some(2));
    /// assert_eq!(request.scheduler_service_type.as_deref(), Some("NodePort"));
    /// ```
    pub fn from_dask_cluster(cluster: &Value) -> Result<Self> {
        let invalid = |reason: &str| Error::InvalidTemplate {
            what: "worker",
            origin: "the DaskCluster resource".into(),
            reason: reason.to_owned(),
        };
        if cluster.get("kind").and_then(Value::as_str) != Some("DaskCluster") {
            return Err(invalid("kind must be DaskCluster"));
        }
        let spec = cluster
            .get("spec")
            .filter(|s| s.is_object())
            .ok_or_else(|| invalid("spec is missing"))?;
        let worker = spec
            .pointer("/worker/spec")
            .filter(|s| s.is_object())
            .ok_or_else(|| invalid("spec.worker.spec is missing"))?;
        let mut worker_pod = json!({"spec": worker});
        name_workers_after_their_pods(&mut worker_pod);
        let scheduler = spec
            .pointer("/scheduler/spec")
            .filter(|s| s.is_object())
            .map(|s| TemplateSource::Pod(json!({"spec": s})));
        let replicas = match spec.pointer("/worker/replicas") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                v.as_u64()
                    .and_then(|n| usize::try_from(n).ok())
                    .ok_or_else(|| invalid("spec.worker.replicas must be a whole number >= 0"))?,
            ),
        };
        let idle_timeout = match spec.get("idleTimeout") {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) if n.as_f64().is_some_and(|t| t > 0.0) => Some(format!("{n}s")),
            // Upstream's 0 means none.
            Some(Value::Number(_)) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(invalid("spec.idleTimeout must be a number of seconds")),
        };
        Ok(ClusterRequest {
            name: cluster
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .map(str::to_owned),
            namespace: cluster
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .map(str::to_owned),
            worker_template: Some(TemplateSource::Pod(worker_pod)),
            scheduler_template: scheduler,
            n_workers: replicas,
            idle_timeout,
            scheduler_service_type: spec
                .pointer("/scheduler/service/type")
                .and_then(Value::as_str)
                .map(str::to_owned),
            ..ClusterRequest::default()
        })
    }
}

/// Gives `DASK_WORKER_NAME` from the pod's name to the containers whose args use
/// `$(DASK_WORKER_NAME)` without defining it.
fn name_workers_after_their_pods(pod: &mut Value) {
    let Some(containers) = pod
        .pointer_mut("/spec/containers")
        .and_then(Value::as_array_mut)
    else {
        return;
    };
    let reference = format!("$({})", dask_worker_spec::WORKER_NAME_ENV);
    for container in containers {
        let uses = ["command", "args"].iter().any(|key| {
            container
                .get(*key)
                .and_then(Value::as_array)
                .is_some_and(|words| {
                    words
                        .iter()
                        .any(|w| w.as_str().is_some_and(|w| w.contains(&reference)))
                })
        });
        let Some(map) = container.as_object_mut() else {
            continue;
        };
        let env = map.entry("env").or_insert_with(|| json!([]));
        if env.is_null() {
            *env = json!([]);
        }
        let Some(env) = env.as_array_mut() else {
            continue;
        };
        let defined = env.iter().any(|e| {
            e.get("name").and_then(Value::as_str) == Some(dask_worker_spec::WORKER_NAME_ENV)
        });
        if uses && !defined {
            env.push(json!({"name": dask_worker_spec::WORKER_NAME_ENV,
                            "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}));
        }
        if env.is_empty() {
            map.remove("env");
        }
    }
}

/// What one worker pod brings to the cluster: its threads (`--nthreads` x `--nworkers`) and
/// memory (`--memory-limit` x `--nworkers`) as Dask counts them, each `None` when its flags
/// do not say (`auto`, a fraction, absent). What `scale(memory=, cores=)` divides by.
pub fn worker_capacity(worker_pod: &Value) -> (Option<u64>, Option<u64>) {
    let Some(container) = worker_pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .and_then(|containers| containers.iter().find(|c| command_line(c).is_some()))
    else {
        return (None, None);
    };
    let Some(line) = command_line(container) else {
        return (None, None);
    };
    let flag = |name: &str| line.flag(name).ok().flatten();
    let processes = match flag("--nworkers").or_else(|| flag("--nprocs")) {
        None => Some(1),
        Some(n) => n.parse::<u64>().ok().filter(|n| *n > 0),
    };
    let threads = flag("--nthreads")
        .and_then(|n| n.parse::<u64>().ok())
        .filter(|n| *n > 0)
        .zip(processes)
        .map(|(t, p)| t * p);
    let memory = flag("--memory-limit")
        .and_then(|m| dask_worker_spec::MemoryLimit::parse(&m).ok())
        .and_then(|m| m.bytes())
        .zip(processes)
        .map(|(b, p)| b * p);
    (threads, memory)
}

fn command_line(container: &Value) -> Option<dask_worker_spec::WorkerCommandLine> {
    let words = |key: &str| -> Vec<String> {
        container
            .get(key)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    };
    dask_worker_spec::WorkerCommandLine::find(&words("command"), &words("args"))
}

/// A template from its source: a file read (and `${VAR}` expanded), or a pod value.
fn template_of(
    source: &TemplateSource,
    what: &'static str,
    origin: &str,
    env: &[(String, String)],
) -> Result<PodTemplate> {
    match source {
        TemplateSource::File(path) => {
            let mut template = PodTemplate::from_file(path, what)?;
            expand_environment_variables(&mut template.pod, env);
            PodTemplate::from_value(template.pod, &template.origin, what)
        }
        TemplateSource::Pod(pod) => PodTemplate::from_value(pod.clone(), origin, what),
    }
}

/// `policy` with its maximum (and minimum) within `count_max`, and the cap when it lowered
/// the maximum.
pub(crate) fn cap_policy(
    mut policy: AdaptPolicy,
    count_max: Option<u32>,
) -> (AdaptPolicy, Option<CountCap>) {
    let (maximum, capped) = cap_count(policy.maximum as usize, count_max);
    // u32::MAX stands for "no maximum": not a cap anyone asked for.
    let capped = capped.filter(|c| c.requested != u32::MAX as usize);
    policy.maximum = u32::try_from(maximum).unwrap_or(u32::MAX);
    policy.minimum = policy.minimum.min(policy.maximum);
    (policy, capped)
}

/// Expands `$VAR` and `${VAR}` in every string of `value` from `env`, as Python's
/// `os.path.expandvars` does through `dask.config.expand_environment_variables` (classic
/// dask-kubernetes applies it to template files and config templates): a name is letters,
/// digits and `_`; an unknown variable, `$(VAR)` (Kubernetes' own syntax) and a lone `$`
/// are left as written. Keys are not expanded.
pub fn expand_environment_variables(value: &mut Value, env: &[(String, String)]) {
    match value {
        Value::String(s) if s.contains('$') => *s = expandvars(s, env),
        Value::Array(items) => items
            .iter_mut()
            .for_each(|v| expand_environment_variables(v, env)),
        Value::Object(map) => map
            .values_mut()
            .for_each(|v| expand_environment_variables(v, env)),
        _ => {}
    }
}

fn expandvars(text: &str, env: &[(String, String)]) -> String {
    let lookup = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (name, consumed) = if let Some(braced) = after.strip_prefix('{') {
            match braced.find('}') {
                Some(end) => (Some(&braced[..end]), end + 2),
                None => (None, 0),
            }
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            ((end > 0).then(|| &after[..end]), end)
        };
        match name.and_then(lookup) {
            Some(value) => {
                out.push_str(value);
                rest = &after[consumed..];
            }
            None => {
                out.push('$');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Sets `env` in the pod's first container: a variable already there gets the new value.
/// The one place dask-kube sets container env from a request ([`set_env`] underneath).
fn set_first_container_env(
    template: &mut PodTemplate,
    env: &BTreeMap<String, String>,
) -> Result<()> {
    if env.is_empty() {
        return Ok(());
    }
    let origin = template.origin.clone();
    let container = template
        .pod
        .pointer_mut("/spec/containers/0")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| Error::InvalidTemplate {
            what: "worker",
            origin,
            reason: "spec.containers[0] must be a container to set env in".into(),
        })?;
    for (name, value) in env {
        set_env(container, name, value, true);
    }
    Ok(())
}

/// The worker pod of operator-era `KubeCluster(image=..., resources=..., worker_command=...)`
/// (and `kubernetes.image`): `resources` must be a mapping of `limits` and/or `requests`,
/// each a mapping, as upstream checks it.
pub fn image_worker_pod(
    image: &str,
    resources: Option<&Value>,
    worker_command: Option<&WorkerCommand>,
) -> Result<Value> {
    let argv = worker_command.map_or_else(
        || DEFAULT_WORKER_COMMAND.map(str::to_owned).to_vec(),
        WorkerCommand::argv,
    );
    if argv.is_empty() {
        return Err(Error::Usage("worker_command= is empty".into()));
    }
    let mut container = json!({"name": "worker", "image": image, "args": argv});
    if let Some(resources) = resources.filter(|r| !r.is_null()) {
        check_resources(resources)?;
        if resources.as_object().is_some_and(|m| !m.is_empty()) {
            container["resources"] = resources.clone();
        }
    }
    Ok(json!({
        "kind": "Pod",
        "metadata": {},
        "spec": {"restartPolicy": "Never", "containers": [container]},
    }))
}

/// `resources=` as the operator's `KubeCluster` checks it: a mapping whose keys are
/// `limits` and `requests`, each a mapping.
fn check_resources(resources: &Value) -> Result<()> {
    let Some(map) = resources.as_object() else {
        return Err(Error::Usage(format!(
            "resources= must be a mapping like {{\"limits\": {{\"memory\": \"2G\"}}}}, not {resources}"
        )));
    };
    for (key, value) in map {
        if key != "limits" && key != "requests" {
            return Err(Error::Usage(format!(
                "resources= has unknown field {key:?} (only \"limits\" and \"requests\")"
            )));
        }
        if !value.is_object() {
            return Err(Error::Usage(format!(
                "resources= {key:?} must be a mapping, not {value}"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ConfigDocument, ConfigSources};
    use crate::manifests::ServiceType;
    use rstest::rstest;

    fn config(value: Value, env: &[(&str, &str)]) -> DaskConfig {
        DaskConfig::from_sources(&ConfigSources {
            documents: vec![ConfigDocument {
                origin: "test.yaml".into(),
                value,
            }],
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        })
        .unwrap()
    }

    fn vars() -> NameVars {
        NameVars {
            user: "Alice".into(),
            uuid: "0a1b2c3d4e".into(),
            env: BTreeMap::new(),
        }
    }

    fn pod(image: &str) -> Value {
        json!({"kind": "Pod", "metadata": {"labels": {"dask.org/component": "worker"}},
               "spec": {"containers": [{"name": "w", "image": image,
               "args": ["dask", "worker", "--nthreads", "1", "--memory-limit", "1GB"]}]}})
    }

    fn request(extra: Value) -> ClusterRequest {
        let mut base = json!({"worker_template": {"pod": pod("ghcr.io/dask/dask")}});
        for (k, v) in extra.as_object().unwrap() {
            base[k] = v.clone();
        }
        serde_json::from_value(base).unwrap()
    }

    fn env_of(container: &Value) -> Vec<(String, String)> {
        container["env"]
            .as_array()
            .map(|env| {
                env.iter()
                    .filter_map(|e| {
                        Some((
                            e["name"].as_str()?.to_owned(),
                            e["value"].as_str()?.to_owned(),
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    #[rstest]
    #[case::exact_name(json!({"name": "exact"}), json!({"kubernetes": {"name": "c-{uuid}"}}), "exact")]
    #[case::request_template_over_config(json!({"name": "t-{uuid}"}), json!({"kubernetes": {"name": "c-{uuid}"}}), "t-0a1b2c3d4e")]
    #[case::config_template(json!({}), json!({"kubernetes": {"name": "c-{user}"}}), "c-alice")]
    #[case::default_template(json!({}), json!({}), "dask-alice-0a1b2c3d4e")]
    fn the_name_is_settled_from_request_then_config(
        #[case] extra: Value,
        #[case] cfg: Value,
        #[case] expected: &str,
    ) {
        let resolved = request(extra).resolve(&config(cfg, &[]), &vars()).unwrap();
        assert_eq!(resolved.spec.name, expected);
    }

    #[rstest]
    #[case::request(json!({"namespace": "team"}), json!({"kubernetes": {"namespace": "cfg"}}), "team")]
    #[case::config(json!({}), json!({"kubernetes": {"namespace": "cfg"}}), "cfg")]
    #[case::left_for_the_credentials(json!({}), json!({}), "")]
    fn the_namespace_comes_from_request_then_config(
        #[case] extra: Value,
        #[case] cfg: Value,
        #[case] expected: &str,
    ) {
        let resolved = request(extra).resolve(&config(cfg, &[]), &vars()).unwrap();
        assert_eq!(resolved.spec.namespace, expected);
    }

    #[rstest]
    #[case::argument_pod(json!({}), json!({"kubernetes": {"worker-template": pod("cfg")}}), Ok("ghcr.io/dask/dask"))]
    #[case::image(json!({"worker_template": null, "image": "img"}), json!({"kubernetes": {"worker-template": pod("cfg")}}), Ok("img"))]
    #[case::config_inline(json!({"worker_template": null}), json!({"kubernetes": {"worker-template": pod("cfg")}}), Ok("cfg"))]
    #[case::config_image(json!({"worker_template": null}), json!({"kubernetes": {"image": "cfg-image"}}), Ok("cfg-image"))]
    #[case::nothing(json!({"worker_template": null}), json!({}), Err("no worker template"))]
    #[case::template_and_image(json!({"image": "img"}), json!({}), Err("give one"))]
    #[case::resources_without_image(json!({"resources": {"limits": {}}}), json!({}), Err("resources= and worker_command="))]
    fn the_worker_template_by_precedence(
        #[case] extra: Value,
        #[case] cfg: Value,
        #[case] expected: std::result::Result<&str, &str>,
    ) {
        match (request(extra).resolve(&config(cfg, &[]), &vars()), expected) {
            (Ok(r), Ok(image)) => assert_eq!(r.spec.worker.image(), Some(image)),
            (Err(e), Err(needle)) => assert!(e.to_string().contains(needle), "{e}"),
            (got, want) => panic!("got {:?}, want {want:?}", got.map(|r| r.spec.worker.pod)),
        }
    }

    /// `kubernetes.env` and the request's env reach the scheduler and the workers (classic
    /// sets them in both templates), the request's winning, in place of the template's.
    #[test]
    fn env_from_config_and_request_reaches_both_pods() {
        let mut template = pod("i");
        template["spec"]["containers"][0]["env"] = json!([{"name": "A", "value": "template"}]);
        let r = ClusterRequest {
            worker_template: Some(TemplateSource::Pod(template)),
            env: BTreeMap::from([
                ("A".into(), "request".into()),
                ("B".into(), "request".into()),
            ]),
            ..Default::default()
        }
        .resolve(
            &config(json!({"kubernetes": {"env": {"B": "config", "C": 3}}}), &[]),
            &vars(),
        )
        .unwrap();
        let want = vec![
            ("A".to_owned(), "request".to_owned()),
            ("B".to_owned(), "request".to_owned()),
            ("C".to_owned(), "3".to_owned()),
        ];
        let objects = r.render("team").unwrap();
        let scheduler = &objects[0]["spec"]["containers"][0];
        let worker = &objects[2]["spec"]["containers"][0];
        for name in ["A", "B", "C"] {
            assert!(env_of(worker).iter().any(|(k, _)| k == name), "{name}");
        }
        assert_eq!(
            env_of(worker)
                .into_iter()
                .filter(|(k, _)| want.iter().any(|(w, _)| w == k))
                .collect::<Vec<_>>(),
            want
        );
        assert_eq!(
            env_of(scheduler)
                .into_iter()
                .filter(|(k, _)| want.iter().any(|(w, _)| w == k))
                .collect::<Vec<_>>(),
            want
        );
    }

    #[rstest]
    #[case::request(json!({"n_workers": 2}), json!({"kubernetes": {"count": {"start": 5}}}), 2, None)]
    #[case::count_start(json!({}), json!({"kubernetes": {"count": {"start": 5}}}), 5, None)]
    #[case::none(json!({}), json!({}), 0, None)]
    #[case::capped(json!({"n_workers": 9}), json!({"kubernetes": {"count": {"max": 4}}}), 4, Some(CountCap { requested: 9, max: 4 }))]
    #[case::adapt_minimum(json!({"n_workers": 7, "adapt": {"minimum": 1, "maximum": 3}}), json!({}), 1, None)]
    fn workers_to_start(
        #[case] extra: Value,
        #[case] cfg: Value,
        #[case] workers: usize,
        #[case] capped: Option<CountCap>,
    ) {
        let r = request(extra).resolve(&config(cfg, &[]), &vars()).unwrap();
        assert_eq!((r.workers, r.capped), (workers, capped));
    }

    #[rstest]
    #[case::range(json!({"minimum": 1, "maximum": 5}), json!({}), (1, 5), None)]
    #[case::no_maximum_is_count_max(json!({"minimum": 1}), json!({"kubernetes": {"count": {"max": 6}}}), (1, 6), None)]
    #[case::no_maximum_no_cap(json!({}), json!({}), (0, u32::MAX), None)]
    #[case::maximum_capped(json!({"minimum": 1, "maximum": 50}), json!({"kubernetes": {"count": {"max": 6}}}), (1, 6), Some(CountCap { requested: 50, max: 6 }))]
    #[case::minimum_follows_the_cap(json!({"minimum": 9, "maximum": 50}), json!({"kubernetes": {"count": {"max": 6}}}), (6, 6), Some(CountCap { requested: 50, max: 6 }))]
    fn the_adapt_range(
        #[case] adapt: Value,
        #[case] cfg: Value,
        #[case] range: (u32, u32),
        #[case] capped: Option<CountCap>,
    ) {
        let r = request(json!({"adapt": adapt}))
            .resolve(&config(cfg, &[]), &vars())
            .unwrap();
        let policy = r.adapt.unwrap();
        assert_eq!(
            ((policy.minimum, policy.maximum), r.capped),
            (range, capped)
        );
    }

    #[rstest]
    #[case::no_template(json!({"worker_template": null}), "no worker template")]
    #[case::missing_file(json!({"worker_template": {"file": "/nonexistent/worker-spec.yml"}}), "cannot read /nonexistent/worker-spec.yml")]
    #[case::bad_name(json!({"name": "{nope}"}), "invalid name template")]
    #[case::bad_duration(json!({"target_duration": "soon"}), "adaptive target duration")]
    #[case::bad_idle_timeout(json!({"idle_timeout": "10 parsecs"}), "idle timeout")]
    #[case::bad_affinity(json!({"apply_default_affinity": "sometimes"}), "apply_default_affinity \"sometimes\"")]
    #[case::bad_service_type(json!({"scheduler_service_type": "Ingress"}), "scheduler service type")]
    #[case::bad_resources(json!({"worker_template": null, "image": "i", "resources": {"cpu": "1"}}), "unknown field \"cpu\"")]
    #[case::api_without_scheduler(json!({"scheduler_api_address": "127.0.0.1:1"}), "needs a scheduler address")]
    #[case::zero_resource_timeout(json!({"resource_timeout": 0.0}), "resource_timeout")]
    fn what_cannot_be_resolved_says_why(#[case] extra: Value, #[case] expected: &str) {
        let err = match serde_json::from_value::<ClusterRequest>({
            let mut base = json!({"worker_template": {"pod": pod("i")}});
            for (k, v) in extra.as_object().unwrap() {
                base[k] = v.clone();
            }
            base
        }) {
            Ok(r) => r
                .resolve(&config(json!({}), &[]), &vars())
                .unwrap_err()
                .to_string(),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(expected), "{err}");
    }

    #[rstest]
    #[case::braced("x${HOME}y", "x/home/ay")]
    #[case::bare("$HOME/w", "/home/a/w")]
    #[case::name_ends_at_a_symbol("$HOME.d", "/home/a.d")]
    #[case::unknown_is_kept("$NOPE and ${NOPE}", "$NOPE and ${NOPE}")]
    #[case::kubernetes_syntax_is_kept("$(DASK_WORKER_NAME)", "$(DASK_WORKER_NAME)")]
    #[case::lone_dollar("costs $ 5", "costs $ 5")]
    #[case::trailing_dollar("x$", "x$")]
    #[case::unclosed_brace("${HOME", "${HOME")]
    #[case::two("$A$B", "12")]
    fn variables_expand_as_os_path_expandvars(#[case] text: &str, #[case] expected: &str) {
        let env = [
            ("HOME".to_owned(), "/home/a".to_owned()),
            ("A".to_owned(), "1".to_owned()),
            ("B".to_owned(), "2".to_owned()),
        ];
        let mut value = json!({"k": [text], "$HOME": text});
        expand_environment_variables(&mut value, &env);
        assert_eq!(value["k"][0], expected);
        assert!(value.get("$HOME").is_some(), "keys are not expanded");
    }

    #[test]
    fn a_template_file_is_expanded_but_a_pod_value_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("worker.yml");
        std::fs::write(
            &path,
            "kind: Pod\nspec:\n  containers:\n  - name: w\n    image: ${IMAGE}\n    args: [dask, worker, --nthreads, '1', --memory-limit, 1GB]\n",
        )
        .unwrap();
        let cfg = config(json!({}), &[("IMAGE", "registry.example/dask:1")]);
        let from_file = ClusterRequest {
            worker_template: Some(TemplateSource::File(path)),
            ..Default::default()
        }
        .resolve(&cfg, &vars())
        .unwrap();
        assert_eq!(
            from_file.spec.worker.image(),
            Some("registry.example/dask:1")
        );
        let from_value = ClusterRequest {
            worker_template: Some(TemplateSource::Pod(pod("${IMAGE}"))),
            ..Default::default()
        }
        .resolve(&cfg, &vars())
        .unwrap();
        assert_eq!(from_value.spec.worker.image(), Some("${IMAGE}"));
    }

    #[rstest]
    #[case::string(json!("dask worker --nthreads 2"), &["dask", "worker", "--nthreads", "2"])]
    #[case::list(json!(["python", "-m", "distributed.cli.dask_worker"]), &["python", "-m", "distributed.cli.dask_worker"])]
    fn image_worker_command(#[case] command: Value, #[case] argv: &[&str]) {
        let command: WorkerCommand = serde_json::from_value(command).unwrap();
        let pod = image_worker_pod("img", None, Some(&command)).unwrap();
        assert_eq!(pod["spec"]["containers"][0]["args"], json!(argv));
    }

    #[test]
    fn an_upstream_dask_cluster_becomes_a_request() {
        let cluster = json!({
            "apiVersion": "kubernetes.dask.org/v1", "kind": "DaskCluster",
            "metadata": {"name": "simple", "namespace": "team"},
            "spec": {
                "idleTimeout": 60,
                "worker": {"replicas": 3, "spec": {"containers": [{"name": "worker", "image": "ghcr.io/dask/dask:latest",
                    "args": ["dask", "worker", "--name", "$(DASK_WORKER_NAME)", "--nthreads", "1", "--memory-limit", "1GB"]}]}},
                "scheduler": {"spec": {"containers": [{"name": "scheduler", "image": "ghcr.io/dask/dask:latest",
                    "args": ["dask", "scheduler", "--host", "0.0.0.0"]}]},
                              "service": {"type": "LoadBalancer"}}
            }
        });
        let request = ClusterRequest::from_dask_cluster(&cluster).unwrap();
        let r = request.resolve(&config(json!({}), &[]), &vars()).unwrap();
        assert_eq!(
            (r.spec.name.as_str(), r.spec.namespace.as_str(), r.workers),
            ("simple", "team", 3)
        );
        assert_eq!(r.spec.service_type, ServiceType::LoadBalancer);
        assert_eq!(r.spec.scheduler_options, ["--idle-timeout", "60s"]);
        let worker = r.spec.worker_pod().unwrap().pod;
        let env = &worker["spec"]["containers"][0]["env"];
        assert!(
            env.as_array()
                .unwrap()
                .iter()
                .any(|e| e["name"] == "DASK_WORKER_NAME"
                    && e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"),
            "{env}"
        );
        assert_eq!(
            r.spec.scheduler_pod().unwrap()["spec"]["containers"][0]["image"],
            "ghcr.io/dask/dask:latest"
        );
    }

    #[rstest]
    #[case::not_a_dask_cluster(json!({"kind": "Pod"}), "kind must be DaskCluster")]
    #[case::no_worker(json!({"kind": "DaskCluster", "spec": {"scheduler": {}}}), "spec.worker.spec is missing")]
    #[case::bad_replicas(json!({"kind": "DaskCluster", "spec": {"worker": {"replicas": -1, "spec": {"containers": []}}}}), "replicas")]
    fn what_is_not_a_dask_cluster_says_why(#[case] cluster: Value, #[case] needle: &str) {
        let err = ClusterRequest::from_dask_cluster(&cluster)
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle), "{err}");
    }

    #[rstest]
    #[case::flags(&["dask", "worker", "--nthreads", "2", "--memory-limit", "3GB"], (Some(2), Some(3_000_000_000)))]
    #[case::processes(&["dask", "worker", "--nworkers", "2", "--nthreads", "2", "--memory-limit", "1GiB"], (Some(4), Some(2 * 1024 * 1024 * 1024)))]
    #[case::auto_memory(&["dask", "worker", "--nthreads", "1", "--memory-limit", "auto"], (Some(1), None))]
    #[case::no_flags(&["dask", "worker"], (None, None))]
    #[case::not_a_worker(&["sleep", "1"], (None, None))]
    fn what_a_worker_pod_brings(
        #[case] args: &[&str],
        #[case] expected: (Option<u64>, Option<u64>),
    ) {
        let pod = json!({"spec": {"containers": [{"name": "w", "image": "i", "args": args}]}});
        assert_eq!(worker_capacity(&pod), expected);
    }

    #[test]
    fn jupyter_and_idle_timeout_become_scheduler_flags_once() {
        let r = request(json!({"jupyter": true, "idle_timeout": "30s",
                                "scheduler_options": ["--idle-timeout", "5m"]}))
        .resolve(&config(json!({}), &[]), &vars())
        .unwrap();
        assert_eq!(
            r.spec.scheduler_options,
            ["--idle-timeout", "5m", "--jupyter"]
        );
        let r = request(json!({}))
            .resolve(
                &config(json!({"kubernetes": {"idle-timeout": "1h"}}), &[]),
                &vars(),
            )
            .unwrap();
        assert_eq!(r.spec.scheduler_options, ["--idle-timeout", "1h"]);
    }
}
