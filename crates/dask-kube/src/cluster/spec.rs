//! [`KubeClusterBuilder`]: a [`ClusterRequest`] and what starting it needs besides (the
//! Dask config, a connection, progress events). It settles nothing itself: the request's
//! one resolution ([`ClusterRequest::resolve`]) does, once.

use super::{Access, ProgressFn};
use crate::Result;
use crate::apiserver::{CreateLimits, Credentials, KubeConnection};
use crate::config::{ConfigSource, DaskConfig, ProcessConfig};
use crate::names::NameVars;
use crate::request::{AdaptRequest, ClusterRequest, ResolvedCluster, TemplateSource};
use crate::template::PodTemplate;
use dask_worker_spec::WorkerDefaults;
use std::path::PathBuf;
use std::sync::Arc;

/// Builds a [`super::KubeCluster`] from a [`ClusterRequest`]; every setting left unset falls
/// back to the Dask config, then defaults, when the request is resolved.
#[must_use]
#[derive(Default)]
pub struct KubeClusterBuilder {
    pub(crate) request: ClusterRequest,
    /// An exact name, once pinned (no template formatting, no new uuid).
    pub(crate) exact_name: Option<String>,
    pub(crate) defaults: Option<WorkerDefaults>,
    pub(crate) config: Option<Arc<dyn ConfigSource>>,
    pub(crate) connection: Option<KubeConnection>,
    /// Tried in order; empty is [`Credentials::Default`].
    pub(crate) credentials: Vec<Credentials>,
    pub(crate) limits: Option<CreateLimits>,
    pub(crate) progress: Option<ProgressFn>,
    pub(crate) name_vars: Option<NameVars>,
}

impl KubeClusterBuilder {
    /// The whole request at once (what the CLI's flags and Python's arguments map to).
    pub fn request(mut self, request: ClusterRequest) -> Self {
        self.request = request;
        self
    }
    /// The request so far.
    pub fn cluster_request(&self) -> &ClusterRequest {
        &self.request
    }
    /// The worker pod template.
    pub fn worker_template(mut self, template: PodTemplate) -> Self {
        self.request.worker_template = Some(TemplateSource::Pod(template.pod));
        self
    }
    /// The worker pod template file (`-f worker-spec.yml`).
    pub fn worker_template_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.request.worker_template = Some(TemplateSource::File(path.into()));
        self
    }
    /// A scheduler pod template (else derived from the worker template).
    pub fn scheduler_template(mut self, template: PodTemplate) -> Self {
        self.request.scheduler_template = Some(TemplateSource::Pod(template.pod));
        self
    }
    /// The namespace.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.request.namespace = Some(namespace.into());
        self
    }
    /// The name template (`dask-{user}-{uuid}`); a name without fields is used as is.
    pub fn name_template(mut self, template: impl Into<String>) -> Self {
        self.request.name = Some(template.into());
        self
    }
    /// An exact cluster name (validated, never formatted).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.exact_name = Some(name.into());
        self
    }
    /// Workers to start together with the scheduler.
    pub fn n_workers(mut self, n: usize) -> Self {
        self.request.n_workers = Some(n);
        self
    }
    /// Adapt (its minimum is started with the scheduler).
    pub fn adapt(mut self, adapt: AdaptRequest) -> Self {
        self.request.adapt = Some(adapt);
        self
    }
    /// Extra `dask scheduler` options.
    pub fn scheduler_options<I: IntoIterator<Item = S>, S: Into<String>>(
        mut self,
        options: I,
    ) -> Self {
        self.request.scheduler_options = options.into_iter().map(Into::into).collect();
        self
    }
    /// The scheduler's `distributed.adaptive.target-duration` (`500ms`, `2s`): how long
    /// the scheduler wants the queued work to take, which sets the worker count it asks
    /// for. Dask's default is 5 s; default here: the Dask config's value, if set.
    pub fn adaptive_target_duration(mut self, duration: impl Into<String>) -> Self {
        self.request.target_duration = Some(duration.into());
        self
    }
    /// The scheduler's `--idle-timeout` (`30m`, `3600s`): with no client and no work for
    /// that long the scheduler ends, and with it the cluster (its controller pod deletes
    /// the scheduler pod; the garbage collector the rest). Default: `kubernetes.idle-timeout`,
    /// else off, as in Dask.
    pub fn idle_timeout(mut self, timeout: impl Into<String>) -> Self {
        self.request.idle_timeout = Some(timeout.into());
        self
    }
    /// Use a scheduler that already runs elsewhere (no scheduler pod).
    pub fn scheduler_address(mut self, address: impl Into<String>) -> Self {
        self.request.scheduler_address = Some(address.into());
        self
    }
    /// Where that scheduler's HTTP server (dashboard and `/api/v1`, which scaling and
    /// retiring use) listens, as `host:port`. Default: the scheduler's host, port 8787.
    /// Python's `deploy_mode="local"` scheduler picks its own port.
    pub fn scheduler_api_address(mut self, address: impl Into<String>) -> Self {
        self.request.scheduler_api_address = Some(address.into());
        self
    }
    /// The worker defaults (tolerations, death timeout, ...; default: the policy's).
    pub fn worker_defaults(mut self, defaults: WorkerDefaults) -> Self {
        self.defaults = Some(defaults);
        self
    }
    /// A fixed Dask config to read `kubernetes.*` from (default: this process's files and
    /// environment, read when needed).
    pub fn config(mut self, config: DaskConfig) -> Self {
        self.config = Some(Arc::new(config));
        self
    }
    /// Where the Dask config is read from when needed: at the resolution, and by the
    /// running cluster before each scale and adapt (Python: its `dask.config`).
    pub fn config_source(mut self, source: Arc<dyn ConfigSource>) -> Self {
        self.config = Some(source);
        self
    }
    /// A connection to the Kubernetes API (default: one opened with the credentials).
    pub fn connection(mut self, connection: KubeConnection) -> Self {
        self.connection = Some(connection);
        self
    }
    /// Where credentials come from (default: [`Credentials::Default`]).
    pub fn credentials(mut self, credentials: Credentials) -> Self {
        self.credentials = vec![credentials];
        self
    }
    /// Credentials tried in order, the first that loads used (classic's `auth=[...]`).
    pub fn credentials_first(mut self, candidates: Vec<Credentials>) -> Self {
        self.credentials = candidates;
        self
    }
    /// How the scheduler is reached.
    pub fn access(mut self, access: Access) -> Self {
        self.request.access = access;
        self
    }
    /// The local port of the scheduler address when port-forwarding (0 picks one).
    pub fn local_port(mut self, port: u16) -> Self {
        self.request.local_port = port;
        self
    }
    /// The local port of the dashboard when port-forwarding (0 picks one).
    pub fn dashboard_port(mut self, port: u16) -> Self {
        self.request.dashboard_port = port;
        self
    }
    /// Pod creation and deletion pacing (default: `kubernetes.max-in-flight`, else
    /// [`CreateLimits::default`]).
    pub fn create_limits(mut self, limits: CreateLimits) -> Self {
        self.limits = Some(limits);
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

    /// Where this builder, and the cluster it starts, read the Dask config.
    pub(crate) fn config_reader(&self) -> Arc<dyn ConfigSource> {
        self.config
            .clone()
            .unwrap_or_else(|| Arc::new(ProcessConfig))
    }

    /// The Dask config as it is now.
    pub(crate) fn dask_config(&self) -> Result<DaskConfig> {
        self.config_reader().load()
    }

    /// Resolves the request without contacting a cluster: what `render` prints and what
    /// [`KubeClusterBuilder::start`] creates. The namespace is left empty when it is the
    /// credentials' to say.
    pub fn resolve(&self) -> Result<ResolvedCluster> {
        let config = self.dask_config()?;
        let vars = self
            .name_vars
            .clone()
            .unwrap_or_else(NameVars::from_environment);
        let mut request = self.request.clone();
        if let Some(name) = &self.exact_name {
            crate::names::validate_cluster_name(name)?;
            // A name without fields formats to itself.
            request.name = Some(name.replace('{', "{{").replace('}', "}}"));
        }
        let mut resolved = request.resolve(&config, &vars)?;
        if let Some(defaults) = &self.defaults {
            resolved.spec.defaults = defaults.clone();
        }
        if let Some(limits) = self.limits {
            resolved.limits = limits;
        }
        Ok(resolved)
    }
}
