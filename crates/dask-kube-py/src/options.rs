//! The pure part of the bindings: what the Python arguments mean, as functions over JSON.
//! `KubeCluster(...)`'s keyword arguments and the Python-side Dask config arrive as one
//! JSON document ([`ClusterOptions`]); `make_pod_spec(...)`'s as [`PodSpecArgs`]. No I/O
//! here apart from reading a template file, so every rule is tested with tables.

use dask_kube::{
    ConfigDocument, ConfigSources, DaskConfig, Error, KubeCluster, KubeClusterBuilder,
    KubeSettings, PodTemplate, Result,
};
use dask_worker_spec::{
    MemoryLimit, TEMPLATE_LOCATIONS, WorkerDefaults, apply_worker_defaults, format_k8s_memory,
    parse_k8s_cpu_millis, parse_k8s_memory,
};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Where the Python-side configuration comes from, for messages.
pub const PYTHON_CONFIG_ORIGIN: &str = "dask.config (Python)";

/// The worker command of operator-era `KubeCluster(image=...)` when none is given. The
/// operator's default is `dask-worker`, a script `distributed` no longer ships.
pub const DEFAULT_WORKER_COMMAND: [&str; 2] = ["dask", "worker"];

/// A worker command as the operator's `worker_command=` takes it: a string (split on
/// whitespace) or a list.
#[derive(Debug, Clone, PartialEq, Deserialize)]
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

/// `KubeCluster(...)`'s arguments after the Python layer normalised them (pod objects to
/// dicts, env values to strings, durations to strings).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterOptions {
    /// The worker pod template as a mapping (a dict or a pod object's dict).
    pub worker_template: Option<Value>,
    /// The worker pod template file.
    pub worker_template_path: Option<PathBuf>,
    /// `scheduler_pod_template=`.
    pub scheduler_template: Option<Value>,
    /// `name=`: the cluster name or a name template (`dask-{user}-{uuid}`).
    pub name: Option<String>,
    /// `namespace=`.
    pub namespace: Option<String>,
    /// `env=`, over `kubernetes.env`.
    pub env: BTreeMap<String, String>,
    /// Operator-era `image=` (a template is made when no other is given).
    pub image: Option<String>,
    /// Operator-era `resources=` (`{"requests": {...}, "limits": {...}}`).
    pub resources: Option<Value>,
    /// Operator-era `worker_command=`.
    pub worker_command: Option<WorkerCommand>,
    /// `idle_timeout=`: the scheduler's `--idle-timeout`.
    pub idle_timeout: Option<String>,
    /// Extra `dask scheduler` options.
    pub scheduler_options: Vec<String>,
    /// `deploy_mode="local"`: the address of the scheduler running in the Python process,
    /// which the worker pods connect to (no scheduler pod, no Service).
    pub scheduler_address: Option<String>,
    /// `deploy_mode="local"`: that scheduler's HTTP server as `host:port`, which scaling
    /// and retiring use.
    pub scheduler_api_address: Option<String>,
    /// The scheduler's `distributed.adaptive.target-duration`.
    pub target_duration: Option<String>,
    /// The Python process's Dask config (`dask.config.config`, already merged with files
    /// and `DASK_*` variables, plus `dask.config.set` overrides).
    pub config: Value,
    /// The Python process's environment (`os.environ`), for `{VAR}` in templates.
    pub environ: Vec<(String, String)>,
    /// `auth=KubeConfig(config_file=...)`: this kubeconfig instead of `$KUBECONFIG`.
    pub kubeconfig: Option<PathBuf>,
    /// `auth=KubeConfig(context=...)`: this context instead of the current one.
    pub context: Option<String>,
}

impl ClusterOptions {
    /// The Dask config of the Python process. `DASK_*` variables are already folded into
    /// `config` by dask, with `dask.config.set` above them: they are not applied again
    /// (that would undo `dask.config.set`), only kept out of the formatting environment.
    pub fn dask_config(&self) -> Result<DaskConfig> {
        let documents = match &self.config {
            Value::Null => Vec::new(),
            value => vec![ConfigDocument {
                origin: PYTHON_CONFIG_ORIGIN.to_owned(),
                value: value.clone(),
            }],
        };
        let env = self
            .environ
            .iter()
            .filter(|(k, _)| !k.starts_with("DASK_"))
            .cloned()
            .collect();
        DaskConfig::from_sources(&ConfigSources { documents, env })
    }

    /// The worker template, by precedence: the argument (dict or file), an operator-era
    /// `image=`, `kubernetes.worker-template-path`, `kubernetes.worker-template`; then
    /// `kubernetes.env` and `env=` set in its first container, as dask-kubernetes does.
    pub fn worker_template(
        &self,
        config: &DaskConfig,
        settings: &KubeSettings,
    ) -> Result<PodTemplate> {
        let mut template = if let Some(pod) = &self.worker_template {
            PodTemplate::from_value(pod.clone(), "the pod_template argument", "worker")?
        } else if let Some(path) = &self.worker_template_path {
            PodTemplate::from_file(path, "worker")?
        } else if let Some(image) = &self.image {
            PodTemplate::from_value(
                operator_worker_pod(image, self.resources.as_ref(), self.worker_command.as_ref())?,
                "image=",
                "worker",
            )?
        } else if let Some(path) = &settings.worker_template_path {
            PodTemplate::from_file(path, "worker")?
        } else if let Some(pod) = &settings.worker_template {
            PodTemplate::from_value(pod.clone(), "kubernetes.worker-template", "worker")?
        } else {
            // Worded for Python by `crate::python_message`.
            return Err(Error::NoWorkerTemplate);
        };
        let mut env = config_env(config)?;
        env.extend(self.env.clone());
        set_first_container_env(&mut template.pod, &env, &template.origin)?;
        Ok(template)
    }

    /// `scheduler_pod_template=`, validated.
    pub fn scheduler_template(&self) -> Result<Option<PodTemplate>> {
        self.scheduler_template
            .clone()
            .map(|pod| {
                PodTemplate::from_value(pod, "the scheduler_pod_template argument", "scheduler")
            })
            .transpose()
    }

    /// Refuses what only a scheduler pod can use when the scheduler runs in the Python
    /// process (`deploy_mode="local"`): said, not silently ignored.
    pub fn check_deploy_mode(&self) -> Result<()> {
        if self.scheduler_address.is_none() {
            if self.scheduler_api_address.is_some() {
                return Err(Error::Usage(
                    "a scheduler API address needs a scheduler address (deploy_mode='local')"
                        .into(),
                ));
            }
            return Ok(());
        }
        let pod_only = [
            ("scheduler_pod_template", self.scheduler_template.is_some()),
            ("scheduler_options", !self.scheduler_options.is_empty()),
        ];
        match pod_only.iter().find(|(_, given)| *given) {
            Some((arg, _)) => Err(Error::Usage(format!(
                "{arg}= is for the scheduler pod; with deploy_mode='local' the scheduler runs \
                 in this process and has no pod"
            ))),
            None => Ok(()),
        }
    }

    /// The library's builder for these arguments, the Python process's Dask config set:
    /// everything `KubeCluster(...)` says, checked where the library checks it (the idle
    /// timeout and target duration as durations, the templates, the deploy mode here).
    /// Credentials, connecting and progress are the caller's.
    pub fn builder(&self) -> Result<KubeClusterBuilder> {
        self.check_deploy_mode()?;
        let config = self.dask_config()?;
        let settings = config.kube_settings()?;
        let mut builder = KubeCluster::builder()
            .worker_template(self.worker_template(&config, &settings)?)
            .scheduler_options(self.scheduler_options.clone());
        if let Some(t) = self.scheduler_template()? {
            builder = builder.scheduler_template(t);
        }
        if let Some(ns) = &self.namespace {
            builder = builder.namespace(ns);
        }
        if let Some(name) = &self.name {
            builder = builder.name_template(name);
        }
        if let Some(d) = &self.target_duration {
            builder = builder.adaptive_target_duration(d);
        }
        if let Some(timeout) = &self.idle_timeout {
            builder = builder.idle_timeout(timeout);
        }
        if let Some(address) = &self.scheduler_address {
            builder = builder.scheduler_address(address);
        }
        if let Some(address) = &self.scheduler_api_address {
            builder = builder.scheduler_api_address(address);
        }
        Ok(builder.config(config))
    }
}

/// `kubernetes.env`: a mapping of variable names to values (numbers read as written).
fn config_env(config: &DaskConfig) -> Result<BTreeMap<String, String>> {
    match config.get("kubernetes.env") {
        None => Ok(BTreeMap::new()),
        Some(Value::Object(map)) => map
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.clone())),
                Value::Number(_) | Value::Bool(_) => Ok((k.clone(), v.to_string())),
                other => Err(Error::Config {
                    origin: "kubernetes.env".into(),
                    reason: format!("the value of {k} must be a string, not {other}"),
                }),
            })
            .collect(),
        Some(other) => Err(Error::Config {
            origin: "kubernetes.env".into(),
            reason: format!("must be a mapping of variable names to values, not {other}"),
        }),
    }
}

/// Sets `env` in the pod's first container: a variable already there gets the new value.
fn set_first_container_env(
    pod: &mut Value,
    env: &BTreeMap<String, String>,
    origin: &str,
) -> Result<()> {
    if env.is_empty() {
        return Ok(());
    }
    let invalid = |reason: &str| Error::InvalidTemplate {
        what: "worker",
        origin: origin.to_owned(),
        reason: reason.to_owned(),
    };
    let container = pod
        .pointer_mut("/spec/containers/0")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| invalid("spec.containers[0] must be a container to set env in"))?;
    let list = container
        .entry("env")
        .or_insert_with(|| Value::Array(Vec::new()));
    if list.is_null() {
        *list = Value::Array(Vec::new());
    }
    let list = list
        .as_array_mut()
        .ok_or_else(|| invalid("spec.containers[0].env must be a list"))?;
    for (name, value) in env {
        let entry = json!({"name": name, "value": value});
        match list
            .iter_mut()
            .find(|e| e.get("name").and_then(Value::as_str) == Some(name))
        {
            Some(existing) => *existing = entry,
            None => list.push(entry),
        }
    }
    Ok(())
}

/// The worker pod of operator-era `KubeCluster(image=..., resources=..., worker_command=...)`.
pub fn operator_worker_pod(
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
    let mut container = json!({
        "name": "worker",
        "image": image,
        "args": argv,
    });
    if let Some(resources) = resources.filter(|r| !r.is_null()) {
        if !resources.is_object() {
            return Err(Error::Usage(format!(
                "resources= must be a mapping like {{\"limits\": {{\"memory\": \"2G\"}}}}, not {resources}"
            )));
        }
        container["resources"] = resources.clone();
    }
    Ok(json!({
        "kind": "Pod",
        "metadata": {},
        "spec": {"restartPolicy": "Never", "containers": [container]},
    }))
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
    /// `--memory-limit` and the memory limit.
    pub memory_limit: Option<String>,
    /// The memory request.
    pub memory_request: Option<String>,
    /// The cpu limit.
    pub cpu_limit: Option<String>,
    /// The cpu request.
    pub cpu_request: Option<String>,
    /// Pod annotations.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

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
    let mut limits = Map::new();
    let mut requests = Map::new();
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

    fn settings(config: &DaskConfig) -> KubeSettings {
        config.kube_settings().unwrap()
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
    fn explicit_env_overrides_kubernetes_env_in_the_first_container() {
        let opts = options(json!({
            "worker_template": {"spec": {"containers": [
                {"name": "w", "image": "i", "env": [{"name": "A", "value": "template"}]},
                {"name": "sidecar", "image": "s"}
            ]}},
            "env": {"A": "argument", "B": "argument"},
            "config": {"kubernetes": {"env": {"B": "config", "C": 3}}},
        }));
        let config = opts.dask_config().unwrap();
        let t = opts.worker_template(&config, &settings(&config)).unwrap();
        let env = &t.pod["spec"]["containers"][0]["env"];
        assert_eq!(
            env,
            &json!([
                {"name": "A", "value": "argument"},
                {"name": "B", "value": "argument"},
                {"name": "C", "value": "3"},
            ])
        );
        assert!(t.pod["spec"]["containers"][1].get("env").is_none());
    }

    #[rstest]
    #[case::argument_dict(json!({"worker_template": {"spec": {"containers": [{"name": "w", "image": "from-dict"}]}}}), "from-dict")]
    #[case::operator_image(json!({"image": "from-image"}), "from-image")]
    #[case::config_inline(json!({"config": {"kubernetes": {"worker-template": {"spec": {"containers": [{"name": "w", "image": "from-config"}]}}}}}), "from-config")]
    #[case::argument_beats_config(json!({"image": "from-image", "config": {"kubernetes": {"worker-template": {"spec": {"containers": [{"name": "w", "image": "from-config"}]}}}}}), "from-image")]
    fn worker_template_precedence(#[case] given: Value, #[case] image: &str) {
        let opts = options(given);
        let config = opts.dask_config().unwrap();
        let t = opts.worker_template(&config, &settings(&config)).unwrap();
        assert_eq!(t.pod["spec"]["containers"][0]["image"], image);
    }

    #[test]
    fn no_template_anywhere_says_what_to_pass() {
        let opts = options(json!({}));
        let config = opts.dask_config().unwrap();
        let e = crate::python_message(
            &opts
                .worker_template(&config, &settings(&config))
                .unwrap_err(),
        );
        assert!(
            e.contains("no worker template")
                && e.contains("kubernetes.worker-template-path")
                && !e.contains("--file"),
            "{e}"
        );
    }

    #[test]
    fn missing_template_file_names_the_file() {
        let opts = options(json!({"worker_template_path": "/nonexistent/worker-spec.yml"}));
        let config = opts.dask_config().unwrap();
        let e = opts
            .worker_template(&config, &settings(&config))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/worker-spec.yml"), "{e}");
    }

    #[rstest]
    #[case::string(json!("dask worker --nthreads 2"), &["dask", "worker", "--nthreads", "2"])]
    #[case::list(json!(["python", "-m", "distributed.cli.dask_worker"]), &["python", "-m", "distributed.cli.dask_worker"])]
    fn operator_worker_command(#[case] command: Value, #[case] argv: &[&str]) {
        let command: WorkerCommand = serde_json::from_value(command).unwrap();
        let pod = operator_worker_pod("img", None, Some(&command)).unwrap();
        assert_eq!(pod["spec"]["containers"][0]["args"], json!(argv));
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
            settings(&config).namespace.as_deref(),
            Some("from-dask-config-set")
        );
        assert!(config.env().iter().any(|(k, _)| k == "JUPYTERHUB_USER"));
    }

    #[test]
    fn idle_timeout_becomes_a_checked_scheduler_flag() {
        let template = json!({"kind": "Pod", "spec": {"containers": [
            {"name": "w", "image": "i", "args": ["dask", "worker"]}]}});
        let spec = |extra: Value| {
            let mut doc = json!({"worker_template": template.clone(), "name": "c"});
            doc.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            options(doc).builder()?.spec(Some("default"))
        };
        /// (case, extra options, the scheduler flags or a piece of the error)
        type Case<'a> = (&'a str, Value, Result<&'a [&'a str], &'a str>);
        let cases: &[Case] = &[
            (
                "a duration becomes the flag",
                json!({"idle_timeout": "30s"}),
                Ok(&["--idle-timeout", "30s"]),
            ),
            (
                "an explicit scheduler option wins",
                json!({"idle_timeout": "30s", "scheduler_options": ["--idle-timeout", "5m"]}),
                Ok(&["--idle-timeout", "5m"]),
            ),
            (
                "the Python config's kubernetes.idle-timeout applies",
                json!({"config": {"kubernetes": {"idle-timeout": "1h"}}}),
                Ok(&["--idle-timeout", "1h"]),
            ),
            (
                "not a duration is refused before any pod is made",
                json!({"idle_timeout": "10 parsecs"}),
                Err("idle timeout"),
            ),
        ];
        for (case, extra, want) in cases {
            match (spec(extra.clone()), want) {
                (Ok(spec), Ok(flags)) => assert_eq!(spec.scheduler_options, *flags, "{case}"),
                (Err(e), Err(w)) => assert!(e.to_string().contains(w), "{case}: {e}"),
                (got, want) => panic!(
                    "{case}: got {:?}, want {want:?}",
                    got.map(|s| s.scheduler_options)
                ),
            }
        }
    }

    #[test]
    fn deploy_mode_local_refuses_what_only_a_scheduler_pod_uses() {
        let local = |extra: Value| {
            let mut doc = json!({"scheduler_address": "tcp://10.0.0.1:8786",
                                 "scheduler_api_address": "127.0.0.1:8787"});
            doc.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            serde_json::from_value::<ClusterOptions>(doc).unwrap()
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
                local(json!({"scheduler_template": {"kind": "Pod", "spec": {"containers": []}}})),
                Some("scheduler_pod_template= is for the scheduler pod"),
            ),
            (
                "local with scheduler options",
                local(json!({"scheduler_options": ["--port", "1"]})),
                Some("scheduler_options= is for the scheduler pod"),
            ),
            (
                "an api address without a scheduler address",
                serde_json::from_value(json!({"scheduler_api_address": "127.0.0.1:1"})).unwrap(),
                Some("needs a scheduler address"),
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

    #[test]
    fn unknown_options_are_refused() {
        let e = serde_json::from_value::<ClusterOptions>(json!({"n_wrokers": 3})).unwrap_err();
        assert!(e.to_string().contains("n_wrokers"), "{e}");
    }
}
