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
use crate::manifests::{self, ClusterSpec, ServiceType};
use crate::names::{self, NameVars};
use crate::scaler::{CountCap, cap_count};
use crate::template::PodTemplate;
use crate::tls::TlsMode;
use crate::{Error, Result};
use dask_worker_spec::{DefaultAffinity, UnknownAffinityMode, WorkerDefaults};
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;
use templates::{set_first_container_env, template_of};

mod capacity;
mod dask_cluster;
mod templates;

pub use capacity::worker_capacity;
pub use templates::{expand_environment_variables, image_worker_pod};

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
    /// The dedicated-pool node affinity of the scheduler and worker pods (classic's
    /// `apply_default_affinity`; `kubernetes.apply-default-affinity`, else preferred).
    pub apply_default_affinity: Option<DefaultAffinity>,
    /// Most pod creations/deletions in flight (`kubernetes.max-in-flight`).
    pub max_in_flight: Option<u32>,
    /// How the client, scheduler and workers talk (`kubernetes.tls`, else a certificate
    /// authority per cluster).
    pub tls: Option<TlsMode>,
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
            None => settings
                .apply_default_affinity
                .parse()
                .map_err(|e: UnknownAffinityMode| Error::Config {
                    origin: "kubernetes.apply-default-affinity".into(),
                    reason: e.to_string(),
                })?,
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
            defaults: WorkerDefaults {
                apply_default_affinity: affinity,
                ..WorkerDefaults::default()
            },
            external_scheduler: self.scheduler_address.clone(),
            external_scheduler_api: self.scheduler_api_address.clone(),
            adaptive_target_duration,
            service_type,
            tls: self.tls.unwrap_or(settings.tls),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ConfigDocument, ConfigSources};
    use rstest::rstest;
    use serde_json::json;

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
    #[case::bad_affinity(json!({"apply_default_affinity": "sometimes"}), "unknown affinity mode \"sometimes\"")]
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

    /// The affinity mode of the request, else `kubernetes.apply-default-affinity`, reaches
    /// both pods (the worker defaults for the workers, the scheduler pool for the scheduler).
    #[rstest]
    #[case::request_over_config(json!({"apply_default_affinity": "required"}), json!({"kubernetes": {"apply-default-affinity": "none"}}), Some("requiredDuringSchedulingIgnoredDuringExecution"))]
    #[case::config(json!({}), json!({"kubernetes": {"apply-default-affinity": "none"}}), None)]
    #[case::default_preferred(json!({}), json!({}), Some("preferredDuringSchedulingIgnoredDuringExecution"))]
    fn the_affinity_mode_reaches_both_pods(
        #[case] extra: Value,
        #[case] cfg: Value,
        #[case] term: Option<&str>,
    ) {
        let objects = request(extra)
            .resolve(&config(cfg, &[]), &vars())
            .unwrap()
            .render("team")
            .unwrap();
        for pod in [&objects[0], &objects[2]] {
            let node_affinity = &pod["spec"]["affinity"]["nodeAffinity"];
            match term {
                Some(term) => assert!(!node_affinity[term].is_null(), "{node_affinity}"),
                None => assert!(node_affinity.is_null(), "{node_affinity}"),
            }
        }
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
