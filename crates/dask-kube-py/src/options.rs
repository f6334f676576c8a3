//! The pure part of the bindings: what the Python arguments mean, as functions over JSON.
//! `KubeCluster(...)`'s keyword arguments and the Python-side Dask config arrive as one
//! JSON document ([`ClusterOptions`]); `make_pod_spec(...)`'s as [`PodSpecArgs`]. No I/O
//! here apart from reading a template file, so every rule is tested with tables.

use dask_kube::{
    Access, ClusterRequest, ConfigDocument, ConfigSource, ConfigSources, Credentials,
    DEFAULT_WORKER_COMMAND, DaskConfig, Error, KubeCluster, KubeClusterBuilder, Reconnect, Result,
};
use dask_worker_spec::{
    MemoryLimit, TEMPLATE_LOCATIONS, WorkerDefaults, apply_worker_defaults, format_k8s_memory,
    parse_k8s_cpu_millis, parse_k8s_memory,
};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Where the Python-side configuration comes from, for messages.
pub const PYTHON_CONFIG_ORIGIN: &str = "dask.config (Python)";

/// `KubeCluster(...)`'s arguments after the Python layer normalised them: the
/// [`ClusterRequest`] they ask for (every field a Python keyword maps to, nothing
/// settled), the Python process's Dask config and environment, and the credentials of
/// `auth=`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterOptions {
    /// The cluster as asked for.
    pub request: ClusterRequest,
    /// Operator-era `custom_cluster_spec=`: a `DaskCluster` resource whose request replaces
    /// the fields above it describes (name, templates, replicas, Service type, idle timeout).
    pub custom_cluster_spec: Option<Value>,
    /// The Python process's Dask config (`dask.config.config`, already merged with files
    /// and `DASK_*` variables, plus `dask.config.set` overrides).
    pub config: Value,
    /// The Python process's environment (`os.environ`), for `{VAR}` and `${VAR}`.
    pub environ: Vec<(String, String)>,
    /// `auth=`: credentials tried in order (empty: the default chain).
    pub auth: Vec<Credentials>,
}

impl ClusterOptions {
    /// The Dask config of the Python process. `DASK_*` variables are already folded into
    /// `config` by dask, with `dask.config.set` above them: they are not applied again
    /// (that would undo `dask.config.set`), only kept out of the formatting environment.
    pub fn dask_config(&self) -> Result<DaskConfig> {
        python_dask_config(&self.config, &self.environ)
    }

    /// The request: the arguments', or the custom `DaskCluster`'s with the arguments'
    /// namespace, environment, access and affinity over it.
    pub fn request(&self) -> Result<ClusterRequest> {
        let Some(custom) = &self.custom_cluster_spec else {
            return Ok(self.request.clone());
        };
        let from_spec = ClusterRequest::from_dask_cluster(custom)?;
        let r = &self.request;
        Ok(ClusterRequest {
            namespace: r.namespace.clone().or(from_spec.namespace.clone()),
            env: r.env.clone(),
            access: r.access,
            local_port: r.local_port,
            dashboard_port: r.dashboard_port,
            apply_default_affinity: r.apply_default_affinity,
            resource_timeout: r.resource_timeout,
            ..from_spec
        })
    }

    /// Refuses what only a scheduler pod can use when the scheduler runs in the Python
    /// process (`deploy_mode="local"`): said, not silently ignored.
    pub fn check_deploy_mode(&self) -> Result<()> {
        let r = &self.request;
        if r.scheduler_address.is_none() {
            return Ok(());
        }
        let pod_only = [
            ("scheduler_pod_template", r.scheduler_template.is_some()),
            ("scheduler_options", !r.scheduler_options.is_empty()),
            ("custom_cluster_spec", self.custom_cluster_spec.is_some()),
            ("jupyter", r.jupyter),
        ];
        match pod_only.iter().find(|(_, given)| *given) {
            Some((arg, _)) => Err(Error::Usage(format!(
                "{arg}= is for the scheduler pod; with deploy_mode='local' the scheduler runs \
                 in this process and has no pod"
            ))),
            None => Ok(()),
        }
    }

    /// The library's builder for these arguments, with the Python process's Dask config
    /// (read from `source` when given: the running cluster then reads it before each scale
    /// and adapt; else the `config` sent) and credentials: everything `KubeCluster(...)`
    /// says, checked where the library checks it. Progress is the caller's.
    pub fn builder(&self, source: Option<Arc<dyn ConfigSource>>) -> Result<KubeClusterBuilder> {
        self.check_deploy_mode()?;
        let builder = KubeCluster::builder()
            .request(self.request()?)
            .credentials_first(self.auth.clone());
        Ok(match source {
            Some(source) => builder.config_source(source),
            None => builder.config(self.dask_config()?),
        })
    }
}

/// `KubeCluster.from_name(...)`'s arguments: where the cluster is, how to reach it, and the
/// Python process's config and credentials.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReconnectOptions {
    /// `namespace=`.
    pub namespace: Option<String>,
    /// `port_forward_cluster_ip=`.
    pub access: Access,
    /// `scheduler_forward_port=`.
    pub dashboard_port: u16,
    /// As [`ClusterOptions::config`].
    pub config: Value,
    /// As [`ClusterOptions::environ`].
    pub environ: Vec<(String, String)>,
    /// As [`ClusterOptions::auth`].
    pub auth: Vec<Credentials>,
}

impl ReconnectOptions {
    /// The library's [`Reconnect`], reading the Python process's config from `source`
    /// (else the `config` sent); the credentials are opened by the caller (`auth=` may list
    /// several).
    pub fn reconnect(&self, source: Option<Arc<dyn ConfigSource>>) -> Result<Reconnect> {
        let source = match source {
            Some(s) => s,
            None => Arc::new(python_dask_config(&self.config, &self.environ)?),
        };
        Ok(Reconnect {
            namespace: self.namespace.clone(),
            access: self.access,
            dashboard_port: self.dashboard_port,
            config: Some(source),
            ..Reconnect::default()
        })
    }
}

/// What Python's config getter answers: its `dask.config` and `os.environ`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PythonConfigSnapshot {
    /// As [`ClusterOptions::config`].
    pub config: Value,
    /// As [`ClusterOptions::environ`].
    pub environ: Vec<(String, String)>,
}

impl PythonConfigSnapshot {
    /// The Dask config it is.
    pub fn dask_config(&self) -> Result<DaskConfig> {
        python_dask_config(&self.config, &self.environ)
    }
}

/// The Dask config of the Python process from `dask.config` (as JSON) and `os.environ`.
pub fn python_dask_config(config: &Value, environ: &[(String, String)]) -> Result<DaskConfig> {
    let documents = match config {
        Value::Null => Vec::new(),
        value => vec![ConfigDocument {
            origin: PYTHON_CONFIG_ORIGIN.to_owned(),
            value: value.clone(),
        }],
    };
    // `DASK_*` variables are in `config` already (below `dask.config.set`): applying them
    // again would undo `dask.config.set`. They still format `{VAR}` and `${VAR}`.
    Ok(DaskConfig::from_sources(&ConfigSources {
        documents,
        env: Vec::new(),
    })?
    .with_environment(environ.to_vec()))
}

/// `make_pod_spec(...)`'s arguments.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodSpecArgs {
    /// The worker image.
    pub image: String,
    /// Pod labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// `--nthreads`.
    #[serde(default = "one")]
    pub threads_per_worker: u32,
    /// Container env.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Merged into the container (keys in snake_case or camelCase).
    #[serde(default)]
    pub extra_container_config: Map<String, Value>,
    /// Merged into the pod spec (keys in snake_case or camelCase).
    #[serde(default)]
    pub extra_pod_config: Map<String, Value>,
    /// `dask worker --resources` (`"GPU=2 MEM=10e9"`): abstract resources for task
    /// constraints, per worker process.
    pub resources: Option<String>,
    /// `--memory-limit` and the memory limit.
    pub memory_limit: Option<String>,
    /// The memory request.
    pub memory_request: Option<String>,
    /// The cpu limit.
    pub cpu_limit: Option<String>,
    /// The cpu request.
    pub cpu_request: Option<String>,
    /// The `nvidia.com/gpu` limit.
    pub gpu_limit: Option<u32>,
    /// Pod annotations.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// The resource name of NVIDIA GPUs, as classic's `gpu_limit` sets it.
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";

fn one() -> u32 {
    1
}

/// A memory value for a Kubernetes resource: a Kubernetes quantity as written, or a Dask
/// byte string (`6GB`, `1.5GiB`) as the same byte count (`6G`), so `memory_limit="6GB"`
/// means one thing to the worker and to the kubelet.
pub fn k8s_memory(argument: &str, value: &str) -> Result<String> {
    if parse_k8s_memory(value).is_ok() {
        return Ok(value.to_owned());
    }
    match MemoryLimit::parse(value) {
        Ok(limit) => match limit.bytes() {
            Some(bytes) => Ok(format_k8s_memory(bytes)),
            None => Err(Error::Usage(format!(
                "{argument}={value:?} is not a byte count (a fraction or `auto` cannot be a \
                 container's memory)"
            ))),
        },
        Err(e) => Err(Error::Usage(format!(
            "{argument}={value:?} is neither a Kubernetes quantity (6G, 6Gi) nor a Dask byte \
             string (6GB, 6GiB): {e}"
        ))),
    }
}

/// A cpu value for a Kubernetes resource (`2`, `1.5`, `500m`).
pub fn k8s_cpu(argument: &str, value: &str) -> Result<String> {
    parse_k8s_cpu_millis(value)
        .map(|_| value.to_owned())
        .map_err(|e| {
            Error::Usage(format!(
                "{argument}={value:?} is not a Kubernetes cpu quantity (2, 1.5, 500m): {e}"
            ))
        })
}

/// `snake_case` to `camelCase`, for keys of Kubernetes fields given the Python way
/// (`image_pull_policy`), as dask-kubernetes' `_set_k8s_attribute` accepts them.
pub fn camel_case(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    let mut upper = false;
    for c in key.chars() {
        if c == '_' && !out.is_empty() {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// Merges `extra` into `target`: mappings merge key by key, anything else replaces.
/// Top-level keys are Kubernetes field names and may be snake_case.
fn merge_fields(target: &mut Map<String, Value>, extra: &Map<String, Value>) {
    fn deep(target: &mut Value, extra: &Value) {
        match (target, extra) {
            (Value::Object(t), Value::Object(e)) => {
                for (k, v) in e {
                    deep(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
            (t, e) => *t = e.clone(),
        }
    }
    for (key, value) in extra {
        deep(target.entry(camel_case(key)).or_insert(Value::Null), value);
    }
}

/// dask-kubernetes' `make_pod_spec`: a worker pod for `image`, with the worker defaults
/// of `dask-worker-spec` already applied under the policy's own rules for bare pods, so
/// the `dask-worker-defaults` policy finds nothing to change in it. Returns the pod and the
/// defaults' warnings.
pub fn make_pod_spec(
    args: &PodSpecArgs,
    defaults: &WorkerDefaults,
) -> Result<(Value, Vec<String>)> {
    if args.threads_per_worker == 0 {
        return Err(Error::Usage("threads_per_worker must be at least 1".into()));
    }
    let mut argv: Vec<String> = DEFAULT_WORKER_COMMAND.map(str::to_owned).to_vec();
    argv.extend([
        "--nthreads".to_owned(),
        args.threads_per_worker.to_string(),
        "--death-timeout".to_owned(),
        "60".to_owned(),
    ]);
    if let Some(memory) = &args.memory_limit {
        argv.extend(["--memory-limit".to_owned(), memory.clone()]);
    }
    if let Some(resources) = args.resources.as_deref().filter(|r| !r.is_empty()) {
        argv.extend(["--resources".to_owned(), resources.to_owned()]);
    }
    let mut limits = Map::new();
    let mut requests = Map::new();
    if let Some(gpus) = args.gpu_limit.filter(|g| *g > 0) {
        limits.insert(GPU_RESOURCE.into(), json!(gpus.to_string()));
    }
    if let Some(v) = &args.cpu_limit {
        limits.insert("cpu".into(), json!(k8s_cpu("cpu_limit", v)?));
    }
    if let Some(v) = &args.memory_limit {
        limits.insert("memory".into(), json!(k8s_memory("memory_limit", v)?));
    }
    if let Some(v) = &args.cpu_request {
        requests.insert("cpu".into(), json!(k8s_cpu("cpu_request", v)?));
    }
    if let Some(v) = &args.memory_request {
        requests.insert("memory".into(), json!(k8s_memory("memory_request", v)?));
    }
    let env: Vec<Value> = args
        .env
        .iter()
        .map(|(k, v)| json!({"name": k, "value": v}))
        .collect();
    let mut container = json!({
        "name": "dask-worker",
        "image": args.image,
        "args": argv,
        "env": env,
        "resources": {"limits": limits, "requests": requests},
    });
    if let Some(c) = container.as_object_mut() {
        merge_fields(c, &args.extra_container_config);
    }
    let mut spec = json!({"restartPolicy": "Never", "containers": [container]});
    if let Some(s) = spec.as_object_mut() {
        merge_fields(s, &args.extra_pod_config);
    }
    // The policy's rules for a bare Pod: what it would do to this pod at admission.
    let rules = TEMPLATE_LOCATIONS
        .iter()
        .find(|l| l.group.is_empty() && l.kind == "Pod")
        .map(|l| l.rules)
        .ok_or_else(|| Error::Usage("dask-worker-spec has no rules for Pods".into()))?;
    let outcome = apply_worker_defaults(&mut spec, "spec", rules, defaults).map_err(|source| {
        Error::WorkerDefaults {
            origin: "make_pod_spec".into(),
            source: Box::new(source),
        }
    })?;
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"labels": args.labels, "annotations": args.annotations},
        "spec": spec,
    });
    Ok((pod, outcome.warnings))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn options(value: Value) -> ClusterOptions {
        serde_json::from_value(value).unwrap()
    }

    fn pod_args(extra: Value) -> PodSpecArgs {
        let mut base = json!({"image": "ghcr.io/dask/dask:latest"});
        for (k, v) in extra.as_object().unwrap() {
            base[k] = v.clone();
        }
        serde_json::from_value(base).unwrap()
    }

    #[rstest]
    #[case::k8s_decimal("6G", "6G")]
    #[case::k8s_binary("6Gi", "6Gi")]
    #[case::dask_decimal("6GB", "6G")]
    #[case::dask_binary("1.5GiB", "1610612736")]
    fn memory_values_become_exact_quantities(#[case] given: &str, #[case] expected: &str) {
        let got = k8s_memory("memory_limit", given).unwrap();
        let bytes_got = parse_k8s_memory(&got).unwrap();
        assert_eq!(bytes_got, parse_k8s_memory(expected).unwrap(), "{got}");
    }

    #[rstest]
    #[case::words("six gigs", "neither a Kubernetes quantity")]
    #[case::fraction("0.5", "not a byte count")]
    #[case::auto("auto", "not a byte count")]
    fn bad_memory_values_are_named(#[case] given: &str, #[case] message: &str) {
        let e = k8s_memory("memory_limit", given).unwrap_err().to_string();
        assert!(e.contains("memory_limit=") && e.contains(message), "{e}");
    }

    #[rstest]
    #[case::snake("image_pull_policy", "imagePullPolicy")]
    #[case::camel("imagePullPolicy", "imagePullPolicy")]
    #[case::single("args", "args")]
    #[case::three_words("termination_grace_period_seconds", "terminationGracePeriodSeconds")]
    fn field_names_become_camel_case(#[case] key: &str, #[case] expected: &str) {
        assert_eq!(camel_case(key), expected);
    }

    #[test]
    fn make_pod_spec_flags_and_resources_agree() {
        let (pod, warnings) = make_pod_spec(
            &pod_args(json!({
                "threads_per_worker": 2, "memory_limit": "6GB", "memory_request": "6GB",
                "cpu_limit": "2", "cpu_request": "2", "labels": {"foo": "bar"},
                "env": {"EXTRA_PIP_PACKAGES": "fastparquet"},
            })),
            &WorkerDefaults::default(),
        )
        .unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        let c = &pod["spec"]["containers"][0];
        assert_eq!(c["resources"]["limits"]["memory"], "6G");
        assert_eq!(c["resources"]["limits"]["cpu"], "2");
        assert_eq!(pod["spec"]["restartPolicy"], "Never");
        assert_eq!(pod["metadata"]["labels"]["foo"], "bar");
        assert_eq!(pod["spec"]["tolerations"].as_array().unwrap().len(), 2);
        let args: Vec<&str> = c["args"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(&args[..2], ["dask", "worker"]);
        assert!(args.windows(2).any(|w| w == ["--memory-limit", "6GB"]));
        assert!(args.windows(2).any(|w| w == ["--death-timeout", "60"]));
    }

    #[test]
    fn make_pod_spec_output_is_a_fixed_point_of_the_policy_defaults() {
        let (pod, _) = make_pod_spec(
            &pod_args(json!({"threads_per_worker": 1, "memory_limit": "1GB"})),
            &WorkerDefaults::default(),
        )
        .unwrap();
        let mut labelled = pod.clone();
        labelled["metadata"]["labels"] = json!({"dask.org/component": "worker"});
        let out = dask_worker_spec::default_object(
            "",
            "Pod",
            "CREATE",
            labelled,
            &WorkerDefaults::default(),
        )
        .unwrap();
        assert!(out.mutated.is_none(), "policy changed {:?}", out.mutated);
    }

    #[test]
    fn make_pod_spec_merges_extra_config_in_snake_or_camel_case() {
        let (pod, _) = make_pod_spec(
            &pod_args(json!({
                "extra_container_config": {"image_pull_policy": "Always"},
                "extra_pod_config": {"node_selector": {"disk": "ssd"}, "tolerations": []},
            })),
            &WorkerDefaults::default(),
        )
        .unwrap();
        assert_eq!(pod["spec"]["containers"][0]["imagePullPolicy"], "Always");
        assert_eq!(pod["spec"]["nodeSelector"]["disk"], "ssd");
        // The defaults still add the worker tolerations to what extra_pod_config set.
        assert_eq!(pod["spec"]["tolerations"].as_array().unwrap().len(), 2);
    }

    #[rstest]
    #[case::zero_threads(json!({"threads_per_worker": 0}), "threads_per_worker")]
    #[case::bad_cpu(json!({"cpu_limit": "two"}), "cpu_limit=\"two\"")]
    #[case::bad_memory(json!({"memory_request": "lots"}), "memory_request=\"lots\"")]
    #[case::threads_above_cpu(json!({"threads_per_worker": 4, "cpu_limit": "1"}), "nthreads")]
    fn make_pod_spec_refuses_what_cannot_work(#[case] extra: Value, #[case] message: &str) {
        let e = make_pod_spec(&pod_args(extra), &WorkerDefaults::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains(message), "{e}");
    }

    #[test]
    fn make_pod_spec_takes_classic_resources_and_gpu_limit() {
        let (pod, _) = make_pod_spec(
            &pod_args(
                json!({"resources": "GPU=1 MEM=10e9", "gpu_limit": 1, "memory_limit": "2GB"}),
            ),
            &WorkerDefaults::default(),
        )
        .unwrap();
        let c = &pod["spec"]["containers"][0];
        let args: Vec<&str> = c["args"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(
            args.windows(2)
                .any(|w| w == ["--resources", "GPU=1 MEM=10e9"]),
            "{args:?}"
        );
        assert_eq!(c["resources"]["limits"][GPU_RESOURCE], "1");
    }

    #[rstest]
    #[case::nothing_anywhere(json!({}), "no worker template")]
    #[case::missing_file(json!({"request": {"worker_template": {"file": "/nonexistent/worker-spec.yml"}}}), "/nonexistent/worker-spec.yml")]
    fn what_python_is_told_when_there_is_no_template(#[case] given: Value, #[case] needle: &str) {
        let e = options(given).builder(None).unwrap().resolve().unwrap_err();
        let message = crate::python_message(&e);
        assert!(
            message.contains(needle) && !message.contains("--file"),
            "{message}"
        );
    }

    #[test]
    fn python_config_wins_over_dask_environment_variables() {
        // dask.config already folded DASK_* in, below dask.config.set: not applied again.
        let opts = options(json!({
            "config": {"kubernetes": {"namespace": "from-dask-config-set"}},
            "environ": [["DASK_KUBERNETES__NAMESPACE", "from-env"], ["JUPYTERHUB_USER", "ada"]],
        }));
        let config = opts.dask_config().unwrap();
        assert_eq!(
            config.kube_settings().unwrap().namespace.as_deref(),
            Some("from-dask-config-set")
        );
        assert!(config.env().iter().any(|(k, _)| k == "JUPYTERHUB_USER"));
    }

    #[test]
    fn a_custom_cluster_spec_is_the_request_with_the_arguments_namespace_and_env() {
        let opts = options(json!({
            "request": {"namespace": "team", "env": {"A": "1"}, "n_workers": 9},
            "custom_cluster_spec": {"kind": "DaskCluster", "metadata": {"name": "custom"},
                "spec": {"worker": {"replicas": 2, "spec": {"containers": [{"name": "w", "image": "i",
                    "args": ["dask", "worker", "--nthreads", "1", "--memory-limit", "1GB"]}]}}}},
        }));
        let resolved = opts.builder(None).unwrap().resolve().unwrap();
        assert_eq!(
            (
                resolved.spec.name.as_str(),
                resolved.spec.namespace.as_str(),
                resolved.workers
            ),
            ("custom", "team", 2)
        );
        let env = &resolved.spec.worker.pod["spec"]["containers"][0]["env"];
        assert_eq!(env, &json!([{"name": "A", "value": "1"}]));
    }

    #[test]
    fn deploy_mode_local_refuses_what_only_a_scheduler_pod_uses() {
        let local = |extra: Value| {
            let mut request = json!({"scheduler_address": "tcp://10.0.0.1:8786",
                                     "scheduler_api_address": "127.0.0.1:8787"});
            request
                .as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            options(json!({"request": request}))
        };
        let cases: &[(&str, ClusterOptions, Option<&str>)] = &[
            (
                "remote with nothing local is fine",
                ClusterOptions::default(),
                None,
            ),
            ("local alone is fine", local(json!({})), None),
            (
                "local with an idle timeout is fine (the local scheduler takes it)",
                local(json!({"idle_timeout": "60s"})),
                None,
            ),
            (
                "local with a scheduler pod template",
                local(
                    json!({"scheduler_template": {"pod": {"kind": "Pod", "spec": {"containers": []}}}}),
                ),
                Some("scheduler_pod_template= is for the scheduler pod"),
            ),
            (
                "local with scheduler options",
                local(json!({"scheduler_options": ["--port", "1"]})),
                Some("scheduler_options= is for the scheduler pod"),
            ),
            (
                "local with jupyter",
                local(json!({"jupyter": true})),
                Some("jupyter= is for the scheduler pod"),
            ),
        ];
        for (case, options, want) in cases {
            match (options.check_deploy_mode(), want) {
                (Ok(()), None) => {}
                (Err(e), Some(w)) => assert!(e.to_string().contains(w), "{case}: {e}"),
                (got, want) => panic!("{case}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[rstest]
    #[case::top_level(json!({"n_wrokers": 3}), "n_wrokers")]
    #[case::in_the_request(json!({"request": {"n_wrokers": 3}}), "n_wrokers")]
    #[case::auth_of_another_kind(json!({"auth": ["token"]}), "token")]
    fn unknown_options_are_refused(#[case] given: Value, #[case] needle: &str) {
        let e = serde_json::from_value::<ClusterOptions>(given).unwrap_err();
        assert!(e.to_string().contains(needle), "{e}");
    }
}
