//! [`KubeClusterBuilder`] and the pure resolution of what a cluster will be: templates,
//! name, namespace and scheduler settings are settled here, once, from the builder, the
//! Dask config and the credentials' default namespace.

use super::{Access, ProgressFn};
use crate::apiserver::{CreateLimits, Credentials, KubeConnection};
use crate::config::{DaskConfig, KubeSettings};
use crate::manifests::ClusterSpec;
use crate::names::{self, NameVars};
use crate::template::PodTemplate;
use crate::{Error, Result};
use dask_worker_spec::WorkerDefaults;
use std::path::PathBuf;

/// Builds a [`super::KubeCluster`]; every setting falls back to the Dask config, then defaults.
#[must_use]
#[derive(Default)]
pub struct KubeClusterBuilder {
    pub(crate) worker_template: Option<PodTemplate>,
    pub(crate) worker_template_path: Option<PathBuf>,
    pub(crate) scheduler_template: Option<PodTemplate>,
    pub(crate) namespace: Option<String>,
    pub(crate) name_template: Option<String>,
    pub(crate) name: Option<String>,
    pub(crate) scheduler_options: Vec<String>,
    pub(crate) external_scheduler: Option<String>,
    pub(crate) external_scheduler_api: Option<String>,
    pub(crate) adaptive_target_duration: Option<String>,
    pub(crate) idle_timeout: Option<String>,
    pub(crate) defaults: WorkerDefaults,
    pub(crate) config: Option<DaskConfig>,
    pub(crate) connection: Option<KubeConnection>,
    pub(crate) credentials: Credentials,
    pub(crate) access: Access,
    pub(crate) local_port: u16,
    pub(crate) dashboard_port: u16,
    pub(crate) limits: Option<CreateLimits>,
    pub(crate) initial_workers: usize,
    pub(crate) progress: Option<ProgressFn>,
    pub(crate) name_vars: Option<NameVars>,
}

impl KubeClusterBuilder {
    /// The worker pod template.
    pub fn worker_template(mut self, template: PodTemplate) -> Self {
        self.worker_template = Some(template);
        self
    }
    /// The worker pod template file (`-f worker-spec.yml`).
    pub fn worker_template_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.worker_template_path = Some(path.into());
        self
    }
    /// A scheduler pod template (else derived from the worker template).
    pub fn scheduler_template(mut self, template: PodTemplate) -> Self {
        self.scheduler_template = Some(template);
        self
    }
    /// The namespace.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }
    /// The name template (`dask-{user}-{uuid}`).
    pub fn name_template(mut self, template: impl Into<String>) -> Self {
        self.name_template = Some(template.into());
        self
    }
    /// An exact cluster name instead of a template.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }
    /// Extra `dask scheduler` options.
    pub fn scheduler_options<I: IntoIterator<Item = S>, S: Into<String>>(
        mut self,
        options: I,
    ) -> Self {
        self.scheduler_options = options.into_iter().map(Into::into).collect();
        self
    }
    /// The scheduler's `distributed.adaptive.target-duration` (`500ms`, `2s`): how long
    /// the scheduler wants the queued work to take, which sets the worker count it asks
    /// for. Dask's default is 5 s; default here: the Dask config's value, if set.
    pub fn adaptive_target_duration(mut self, duration: impl Into<String>) -> Self {
        self.adaptive_target_duration = Some(duration.into());
        self
    }
    /// The scheduler's `--idle-timeout` (`30m`, `3600s`): with no client and no work for
    /// that long the scheduler ends, and with it the cluster (its controller pod deletes
    /// the scheduler pod; the garbage collector the rest). Default: `kubernetes.idle-timeout`,
    /// else off, as in Dask.
    pub fn idle_timeout(mut self, timeout: impl Into<String>) -> Self {
        self.idle_timeout = Some(timeout.into());
        self
    }
    /// Use a scheduler that already runs elsewhere (no scheduler pod).
    pub fn scheduler_address(mut self, address: impl Into<String>) -> Self {
        self.external_scheduler = Some(address.into());
        self
    }
    /// Where that scheduler's HTTP server (dashboard and `/api/v1`, which scaling and
    /// retiring use) listens, as `host:port`. Default: the scheduler's host, port 8787.
    /// Python's `deploy_mode="local"` scheduler picks its own port.
    pub fn scheduler_api_address(mut self, address: impl Into<String>) -> Self {
        self.external_scheduler_api = Some(address.into());
        self
    }
    /// The worker defaults (tolerations, death timeout, ...).
    pub fn worker_defaults(mut self, defaults: WorkerDefaults) -> Self {
        self.defaults = defaults;
        self
    }
    /// The Dask config to read `kubernetes.*` from (default: files and environment).
    pub fn config(mut self, config: DaskConfig) -> Self {
        self.config = Some(config);
        self
    }
    /// A connection to the Kubernetes API (default: one opened with the credentials).
    pub fn connection(mut self, connection: KubeConnection) -> Self {
        self.connection = Some(connection);
        self
    }
    /// Where credentials come from (default: [`Credentials::Default`]).
    pub fn credentials(mut self, credentials: Credentials) -> Self {
        self.credentials = credentials;
        self
    }
    /// How the scheduler is reached.
    pub fn access(mut self, access: Access) -> Self {
        self.access = access;
        self
    }
    /// The local port of the scheduler address when port-forwarding (0 picks one).
    pub fn local_port(mut self, port: u16) -> Self {
        self.local_port = port;
        self
    }
    /// The local port of the dashboard when port-forwarding (0 picks one).
    pub fn dashboard_port(mut self, port: u16) -> Self {
        self.dashboard_port = port;
        self
    }
    /// Pod creation and deletion pacing (default: `kubernetes.max-in-flight`, else
    /// [`CreateLimits::default`]).
    pub fn create_limits(mut self, limits: CreateLimits) -> Self {
        self.limits = Some(limits);
        self
    }
    /// Workers created together with the scheduler pod, before it runs (they connect
    /// once the Service answers), as the operator does: `up` to N workers takes one pod
    /// start, not two in a row.
    pub fn initial_workers(mut self, n: usize) -> Self {
        self.initial_workers = n;
        self
    }
    /// Progress events.
    pub fn on_progress(mut self, progress: ProgressFn) -> Self {
        self.progress = Some(progress);
        self
    }
    /// The user, uuid and environment of the name template (default: this process's).
    pub fn name_vars(mut self, vars: NameVars) -> Self {
        self.name_vars = Some(vars);
        self
    }

    /// The Dask config this builder reads: the one given, else files and environment.
    pub(crate) fn dask_config(&self) -> Result<DaskConfig> {
        match &self.config {
            Some(c) => Ok(c.clone()),
            None => DaskConfig::load(),
        }
    }

    /// Resolves templates, name and namespace without contacting a cluster: what `render`
    /// prints and what [`KubeClusterBuilder::start`] creates. `default_namespace` is the
    /// credentials' namespace, used when neither the builder nor the config names one.
    pub fn spec(&self, default_namespace: Option<&str>) -> Result<ClusterSpec> {
        let settings = self.dask_config()?.kube_settings()?;
        let mut spec = resolve_spec(self, &settings)?;
        if spec.namespace.is_empty() {
            spec.namespace = default_namespace.unwrap_or("default").to_owned();
        }
        Ok(spec)
    }
}

/// Settles everything about a cluster that needs no API server, once: the templates (read
/// from file once), the name (one uuid), the namespace when the builder or the config names
/// one (else left empty for the credentials' default), and the scheduler settings.
pub(crate) fn resolve_spec(b: &KubeClusterBuilder, settings: &KubeSettings) -> Result<ClusterSpec> {
    let worker = match (&b.worker_template, &b.worker_template_path) {
        (Some(t), _) => t.clone(),
        (None, Some(path)) => PodTemplate::from_file(path, "worker")?,
        (None, None) => match (&settings.worker_template_path, &settings.worker_template) {
            (Some(path), _) => PodTemplate::from_file(path, "worker")?,
            (None, Some(inline)) => {
                PodTemplate::from_value(inline.clone(), "kubernetes.worker-template", "worker")?
            }
            (None, None) => return Err(Error::NoWorkerTemplate),
        },
    };
    let scheduler = match (&b.scheduler_template, &settings.scheduler_template) {
        (Some(t), _) => Some(t.clone()),
        (None, Some(inline)) => Some(PodTemplate::from_value(
            inline.clone(),
            "kubernetes.scheduler-template",
            "scheduler",
        )?),
        (None, None) => None,
    };
    let vars = b
        .name_vars
        .clone()
        .unwrap_or_else(NameVars::from_environment);
    let name = match &b.name {
        Some(n) => {
            names::validate_cluster_name(n)?;
            n.clone()
        }
        None => names::cluster_name(
            b.name_template
                .as_deref()
                .unwrap_or(&settings.name_template),
            &vars,
        )?,
    };
    let namespace = b
        .namespace
        .clone()
        .or_else(|| settings.namespace.clone())
        .unwrap_or_default();
    let adaptive_target_duration = b
        .adaptive_target_duration
        .clone()
        .or_else(|| settings.adaptive_target_duration.clone());
    if let Some(duration) = &adaptive_target_duration {
        crate::manifests::validate_timedelta(duration)
            .map_err(|reason| Error::Usage(format!("adaptive target duration: {reason}")))?;
    }
    let mut scheduler_options = b.scheduler_options.clone();
    let idle_timeout = b
        .idle_timeout
        .clone()
        .or_else(|| settings.idle_timeout.clone());
    if let Some(timeout) = idle_timeout {
        crate::manifests::validate_timedelta(&timeout)
            .map_err(|reason| Error::Usage(format!("idle timeout: {reason}")))?;
        // An explicit scheduler option wins over the setting.
        if !crate::manifests::has_idle_timeout(&scheduler_options) {
            scheduler_options.extend(["--idle-timeout".to_owned(), timeout]);
        }
    }
    Ok(ClusterSpec {
        name,
        namespace,
        user: names::user_label(&vars.user),
        worker,
        scheduler,
        scheduler_options,
        defaults: b.defaults.clone(),
        external_scheduler: b.external_scheduler.clone(),
        adaptive_target_duration,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigSources;
    use rstest::rstest;
    use serde_json::{Value, json};

    fn template() -> PodTemplate {
        PodTemplate::from_value(
            json!({"kind": "Pod", "metadata": {"labels": {"dask.org/component": "worker"}},
                   "spec": {"containers": [{"name": "w", "image": "ghcr.io/dask/dask",
                   "args": ["dask", "worker", "--nthreads", "1", "--memory-limit", "1GB"]}]}}),
            "test",
            "worker",
        )
        .unwrap()
    }

    fn settings(config: Value) -> KubeSettings {
        DaskConfig::from_sources(&ConfigSources {
            documents: vec![crate::config::ConfigDocument {
                origin: "test.yaml".into(),
                value: config,
            }],
            env: vec![],
        })
        .unwrap()
        .kube_settings()
        .unwrap()
    }

    fn vars() -> NameVars {
        NameVars {
            user: "Alice".into(),
            uuid: "0a1b2c3d4e".into(),
            env: Default::default(),
        }
    }

    #[rstest]
    #[case::builder_name_wins(Some("exact"), Some("t-{uuid}"), json!({"kubernetes": {"name": "c-{uuid}"}}), "exact")]
    #[case::builder_template_over_config(None, Some("t-{uuid}"), json!({"kubernetes": {"name": "c-{uuid}"}}), "t-0a1b2c3d4e")]
    #[case::config_template(None, None, json!({"kubernetes": {"name": "c-{user}"}}), "c-alice")]
    #[case::default_template(None, None, json!({}), "dask-alice-0a1b2c3d4e")]
    fn the_name_is_settled_from_builder_then_config(
        #[case] name: Option<&str>,
        #[case] name_template: Option<&str>,
        #[case] config: Value,
        #[case] expected: &str,
    ) {
        let mut b = KubeClusterBuilder::default()
            .worker_template(template())
            .name_vars(vars());
        if let Some(n) = name {
            b = b.name(n);
        }
        if let Some(t) = name_template {
            b = b.name_template(t);
        }
        assert_eq!(resolve_spec(&b, &settings(config)).unwrap().name, expected);
    }

    #[rstest]
    #[case::builder(Some("team"), json!({"kubernetes": {"namespace": "cfg"}}), "team")]
    #[case::config(None, json!({"kubernetes": {"namespace": "cfg"}}), "cfg")]
    #[case::left_for_the_credentials(None, json!({}), "")]
    fn the_namespace_comes_from_builder_then_config(
        #[case] namespace: Option<&str>,
        #[case] config: Value,
        #[case] expected: &str,
    ) {
        let mut b = KubeClusterBuilder::default()
            .worker_template(template())
            .name_vars(vars());
        if let Some(ns) = namespace {
            b = b.namespace(ns);
        }
        assert_eq!(
            resolve_spec(&b, &settings(config)).unwrap().namespace,
            expected
        );
    }

    #[rstest]
    #[case::no_template(KubeClusterBuilder::default(), "no worker template")]
    #[case::missing_file(KubeClusterBuilder::default().worker_template_path("/nonexistent/worker-spec.yml"), "cannot read /nonexistent/worker-spec.yml")]
    #[case::bad_name(KubeClusterBuilder::default().worker_template(template()).name("Not_A_Name"), "invalid cluster name")]
    #[case::bad_duration(KubeClusterBuilder::default().worker_template(template()).adaptive_target_duration("soon"), "adaptive target duration")]
    fn what_cannot_be_resolved_says_why(#[case] b: KubeClusterBuilder, #[case] expected: &str) {
        let err = resolve_spec(&b, &settings(json!({}))).unwrap_err();
        assert!(err.to_string().contains(expected), "{err}");
    }
}
