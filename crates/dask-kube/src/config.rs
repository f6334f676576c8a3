//! Dask configuration, read the way dask reads it: YAML files under `/etc/dask`,
//! `~/.config/dask` and `$DASK_CONFIG`, then `DASK_*` environment variables, later sources
//! overriding earlier ones key by key. `_` and `-` in keys are the same key, as dask's
//! `canonical_name` makes them.
//!
//! Loading is split in two: [`ConfigSources`] gathers file texts and variables (I/O), and
//! [`DaskConfig::from_sources`] merges them (pure), so every rule is testable without files.

use crate::literal;
use crate::names::DEFAULT_NAME_TEMPLATE;
use crate::request::WorkerCommand;
use crate::tls::TlsMode;
use crate::{Error, Result};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The controller image unless `kubernetes.controller-image` says otherwise: this build's
/// own version of dask-kube (pinned by [`CONTROLLER_IMAGE_DIGEST`] when the build knew it:
/// [`default_controller_image`]).
pub const DEFAULT_CONTROLLER_IMAGE: &str =
    concat!("ghcr.io/dask-on-k8s/dask-kube:", env!("CARGO_PKG_VERSION"));

/// The digest of [`DEFAULT_CONTROLLER_IMAGE`], given to the build as
/// `DASK_KUBE_CONTROLLER_IMAGE_DIGEST=sha256:...` (cargo rebuilds when it changes). A binary
/// cannot carry the digest of an image that contains it, so a release builds and pushes the
/// controller image first (its binary never starts a controller pod), then builds the
/// clients (CLI, Python wheels) with that image's digest: a tag moved later (or a registry
/// that serves another image under it) cannot change what the controller pod runs. Unset in
/// development builds, whose image is pushed after the binary is built
/// (`e2e-tests/local-cluster/images/build.sh` prints the digests it pushed).
pub const CONTROLLER_IMAGE_DIGEST: Option<&str> = option_env!("DASK_KUBE_CONTROLLER_IMAGE_DIGEST");

const _: () = assert!(
    digest_is_valid(CONTROLLER_IMAGE_DIGEST),
    "DASK_KUBE_CONTROLLER_IMAGE_DIGEST must be sha256:<64 lowercase hex digits>"
);

/// Whether a build-time digest is `sha256:` and 64 lowercase hex digits (empty: none).
const fn digest_is_valid(digest: Option<&str>) -> bool {
    let Some(digest) = digest else {
        return true;
    };
    let bytes = digest.as_bytes();
    if bytes.is_empty() {
        return true;
    }
    let prefix = b"sha256:";
    if bytes.len() != prefix.len() + 64 {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        let ok = if i < prefix.len() {
            bytes[i] == prefix[i]
        } else {
            matches!(bytes[i], b'0'..=b'9' | b'a'..=b'f')
        };
        if !ok {
            return false;
        }
        i += 1;
    }
    true
}

/// `image@digest`, or `image` without a digest.
pub fn image_reference(image: &str, digest: Option<&str>) -> String {
    match digest.filter(|d| !d.is_empty()) {
        Some(d) => format!("{image}@{d}"),
        None => image.to_owned(),
    }
}

/// The controller image dask-kube chooses: [`DEFAULT_CONTROLLER_IMAGE`], by digest when the
/// build had one.
pub fn default_controller_image() -> String {
    image_reference(DEFAULT_CONTROLLER_IMAGE, CONTROLLER_IMAGE_DIGEST)
}

/// Default of `kubernetes.scheduler-service-type`.
pub const DEFAULT_SERVICE_TYPE: &str = "ClusterIP";
/// Default of `kubernetes.apply-default-affinity`, as classic's `apply_default_affinity`.
pub const DEFAULT_AFFINITY: &str = "preferred";

/// Default of `distributed.dashboard.link`.
pub const DEFAULT_DASHBOARD_LINK: &str = "{scheme}://{host}:{port}/status";

/// One configuration document and where it came from (for messages).
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigDocument {
    /// File path, or `environment`.
    pub origin: String,
    /// The document.
    pub value: Value,
}

/// The inputs of a Dask configuration, in priority order (last wins).
#[derive(Debug, Clone, Default)]
pub struct ConfigSources {
    /// YAML documents from files, lowest priority first.
    pub documents: Vec<ConfigDocument>,
    /// Environment variables (all of them; only `DASK_*` are used).
    pub env: Vec<(String, String)>,
}

impl ConfigSources {
    /// The directories dask searches, lowest priority first: `$DASK_ROOT_CONFIG` (default
    /// `/etc/dask`), `~/.config/dask`, and `$DASK_CONFIG` (a directory or a file).
    pub fn search_path(env: &[(String, String)], home: Option<&Path>) -> Vec<PathBuf> {
        let get = |key: &str| {
            env.iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
                .filter(|v| !v.is_empty())
        };
        let mut paths = vec![PathBuf::from(
            get("DASK_ROOT_CONFIG").unwrap_or_else(|| "/etc/dask".to_owned()),
        )];
        if let Some(home) = home {
            paths.push(home.join(".config").join("dask"));
        }
        if let Some(extra) = get("DASK_CONFIG") {
            let extra = PathBuf::from(extra);
            if !paths.contains(&extra) {
                paths.push(extra);
            }
        }
        paths
    }

    /// Reads the YAML files of `paths` (a directory's `*.yaml`, `*.yml` and `*.json` in name
    /// order; a file as is; missing paths are skipped) and keeps `env`.
    pub fn read(paths: &[PathBuf], env: Vec<(String, String)>) -> Result<Self> {
        let mut documents = Vec::new();
        for path in paths {
            let files = if path.is_dir() {
                let entries = std::fs::read_dir(path).map_err(|source| Error::ReadFile {
                    path: path.clone(),
                    source,
                })?;
                let mut files: Vec<PathBuf> = entries
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| {
                        p.extension()
                            .and_then(|e| e.to_str())
                            .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
                    })
                    .collect();
                files.sort();
                files
            } else if path.is_file() {
                vec![path.clone()]
            } else {
                continue;
            };
            for file in files {
                let text = std::fs::read_to_string(&file).map_err(|source| Error::ReadFile {
                    path: file.clone(),
                    source,
                })?;
                let origin = file.display().to_string();
                let value: Value = if text.trim().is_empty() {
                    Value::Null
                } else {
                    serde_norway::from_str(&text).map_err(|source| Error::Yaml {
                        origin: origin.clone(),
                        source,
                    })?
                };
                documents.push(ConfigDocument { origin, value });
            }
        }
        Ok(ConfigSources { documents, env })
    }

    /// The sources of this process: the search path from the real environment and home.
    pub fn from_environment() -> Result<Self> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let paths = Self::search_path(&env, home.as_deref());
        Self::read(&paths, env)
    }
}

/// Where the library reads the Dask config from, each time it needs a value (the cap on
/// worker counts before each scale and adapt, as well as a cluster's resolution): so a
/// setting changed while a cluster runs applies to its next call, as it does in Dask. The
/// CLI and the controller pod read this process's files and `DASK_*` variables
/// ([`ProcessConfig`]); Python feeds its process's `dask.config`, `dask.config.set`
/// included; a fixed [`DaskConfig`] is a source too.
pub trait ConfigSource: Send + Sync + 'static {
    /// The configuration as it is now.
    fn load(&self) -> Result<DaskConfig>;
}

/// This process's Dask config files and `DASK_*` variables, read at each use.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessConfig;

impl ConfigSource for ProcessConfig {
    fn load(&self) -> Result<DaskConfig> {
        DaskConfig::load()
    }
}

impl ConfigSource for DaskConfig {
    fn load(&self) -> Result<DaskConfig> {
        Ok(self.clone())
    }
}

/// A merged Dask configuration.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DaskConfig {
    root: Map<String, Value>,
    env: Vec<(String, String)>,
}

/// The key of `map` that `key` names, as dask's `canonical_name`: the key itself, or the
/// same key with `_` and `-` swapped. Keys are never rewritten, so a worker template's
/// label keys survive as written.
fn find_key(map: &Map<String, Value>, key: &str) -> Option<String> {
    [key.to_owned(), key.replace('_', "-"), key.replace('-', "_")]
        .into_iter()
        .find(|k| map.contains_key(k))
}

/// Deep-merges `new` into `base`; `new` wins on conflicts.
fn merge_into(base: &mut Map<String, Value>, new: &Map<String, Value>) {
    for (key, value) in new {
        let key = find_key(base, key).unwrap_or_else(|| key.clone());
        match (base.get_mut(&key), value) {
            (Some(Value::Object(existing)), Value::Object(incoming)) => {
                merge_into(existing, incoming)
            }
            _ => {
                base.insert(key, value.clone());
            }
        }
    }
}

impl DaskConfig {
    /// Merges the documents, then the `DASK_*` variables (`__` nests, values read like
    /// Python literals).
    ///
    /// # Example
    /// ```
    /// use dask_kube::{ConfigDocument, ConfigSources, DaskConfig};
    /// let sources = ConfigSources {
    ///     documents: vec![ConfigDocument {
    ///         origin: "a.yaml".into(),
    ///         value: serde_json::json!({"kubernetes": {"namespace": "from-file"}}),
    ///     }],
    ///     env: vec![("DASK_KUBERNETES__COUNT__MAX".into(), "8".into())],
    /// };
    /// let config = DaskConfig::from_sources(&sources).unwrap();
    /// assert_eq!(config.get_str("kubernetes.namespace").unwrap(), Some("from-file".into()));
    /// assert_eq!(config.get_u32("kubernetes.count.max").unwrap(), Some(8));
    /// ```
    pub fn from_sources(sources: &ConfigSources) -> Result<Self> {
        let mut root = Map::new();
        for doc in &sources.documents {
            match &doc.value {
                Value::Null => {}
                Value::Object(map) => merge_into(&mut root, map),
                _ => {
                    return Err(Error::Config {
                        origin: doc.origin.clone(),
                        reason: "a dask config file must be a mapping".into(),
                    });
                }
            }
        }
        let mut env_vars: Vec<&(String, String)> = sources
            .env
            .iter()
            .filter(|(k, _)| k.starts_with("DASK_") && k.len() > 5)
            .collect();
        // Deterministic and parent-before-child, so `DASK_A__B` refines `DASK_A`.
        env_vars.sort_by_key(|(k, _)| k.matches("__").count());
        for (name, value) in env_vars {
            let path: Vec<String> = name
                .get(5..)
                .unwrap_or_default()
                .to_lowercase()
                .split("__")
                .map(str::to_owned)
                .collect();
            let mut nested = literal::interpret(value);
            for key in path.iter().rev() {
                let mut map = Map::new();
                map.insert(key.clone(), nested);
                nested = Value::Object(map);
            }
            if let Value::Object(map) = nested {
                merge_into(&mut root, &map);
            }
        }
        Ok(DaskConfig {
            root,
            env: sources.env.clone(),
        })
    }

    /// The configuration of this process (files and environment).
    pub fn load() -> Result<Self> {
        Self::from_sources(&ConfigSources::from_environment()?)
    }

    /// The value at a dotted key (`kubernetes.worker-template-path`; `_` and `-` alike).
    pub fn get(&self, key: &str) -> Option<&Value> {
        let mut parts = key.split('.');
        let first = parts.next()?;
        let mut current = self.root.get(&find_key(&self.root, first)?)?;
        for part in parts {
            let map = current.as_object()?;
            current = map.get(&find_key(map, part)?)?;
        }
        (!current.is_null()).then_some(current)
    }

    /// A string value; numbers are accepted as written.
    pub fn get_str(&self, key: &str) -> Result<Option<String>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(Value::Number(n)) => Ok(Some(n.to_string())),
            Some(other) => Err(self.type_error(key, "a string", other)),
        }
    }

    /// A duration as Dask writes it: a number is seconds (`60` -> `60s`), a string is kept
    /// as written (`30m`); null or empty is unset. Checked where it is used.
    pub fn get_timedelta(&self, key: &str) -> Result<Option<String>> {
        match self.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => Ok(Some(format!("{n}s"))),
            Some(_) => Ok(self.get_str(key)?.filter(|t| !t.is_empty())),
        }
    }

    /// A non-negative whole number.
    pub fn get_u32(&self, key: &str) -> Result<Option<u32>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Number(n)) => n
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| {
                    self.type_error(key, "a whole number >= 0", &Value::Number(n.clone()))
                }),
            Some(Value::String(s)) => s.parse().map(Some).map_err(|_| {
                self.type_error(key, "a whole number >= 0", &Value::String(s.clone()))
            }),
            Some(other) => Err(self.type_error(key, "a whole number >= 0", other)),
        }
    }

    fn type_error(&self, key: &str, wanted: &str, got: &Value) -> Error {
        Error::Config {
            origin: key.to_owned(),
            reason: format!("must be {wanted}, not {got}"),
        }
    }

    /// The environment the configuration was read with (for `{VAR}` and `${VAR}`).
    pub fn env(&self) -> &[(String, String)] {
        &self.env
    }

    /// The same configuration formatting with `env` (`{VAR}`, `${VAR}`); `DASK_*`
    /// variables in it are not applied as configuration (Python's `dask.config` already
    /// holds them, below `dask.config.set`).
    #[must_use]
    pub fn with_environment(mut self, env: Vec<(String, String)>) -> Self {
        self.env = env;
        self
    }

    /// The `kubernetes.*` and dashboard settings dask-kube uses.
    pub fn kube_settings(&self) -> Result<KubeSettings> {
        let worker_template = match self.get("kubernetes.worker-template") {
            None => None,
            Some(Value::Object(map)) if map.is_empty() => None,
            Some(v @ Value::Object(_)) => Some(v.clone()),
            Some(other) => {
                return Err(self.type_error(
                    "kubernetes.worker-template",
                    "a mapping (a pod)",
                    other,
                ));
            }
        };
        let scheduler_template = match self.get("kubernetes.scheduler-template") {
            None => None,
            Some(Value::Object(map)) if map.is_empty() => None,
            Some(v @ Value::Object(_)) => Some(v.clone()),
            Some(other) => {
                return Err(self.type_error(
                    "kubernetes.scheduler-template",
                    "a mapping (a pod)",
                    other,
                ));
            }
        };
        let worker_command = match self.get("kubernetes.worker-command") {
            None => None,
            Some(v) => Some(serde_json::from_value(v.clone()).map_err(|_| {
                self.type_error(
                    "kubernetes.worker-command",
                    "a string or a list of strings",
                    v,
                )
            })?),
        };
        let resources = match self.get("kubernetes.resources") {
            None => None,
            Some(Value::Object(map)) if map.is_empty() => None,
            Some(v @ Value::Object(_)) => Some(v.clone()),
            Some(other) => {
                return Err(self.type_error(
                    "kubernetes.resources",
                    "a mapping of limits and requests",
                    other,
                ));
            }
        };
        let resource_timeout = match self.get("kubernetes.resource-timeout") {
            None => None,
            Some(Value::Number(n)) => n.as_f64(),
            Some(other) => {
                return Err(self.type_error(
                    "kubernetes.resource-timeout",
                    "a number of seconds",
                    other,
                ));
            }
        };
        // `kubernetes.name` is the key dask-kubernetes' code reads; `worker-name` the one its
        // docs show. The code's key wins when both are set.
        let name_template = match self.get_str("kubernetes.name")? {
            Some(n) => Some(n),
            None => self.get_str("kubernetes.worker-name")?,
        };
        let tls = match self.get("kubernetes.tls") {
            None | Some(Value::Null) => TlsMode::default(),
            Some(Value::Bool(true)) => TlsMode::ClusterCa,
            Some(Value::Bool(false)) => TlsMode::Off,
            Some(Value::String(mode)) => mode.parse().map_err(|e: Error| Error::Config {
                origin: "kubernetes.tls".into(),
                reason: e.to_string(),
            })?,
            Some(other) => {
                return Err(self.type_error(
                    "kubernetes.tls",
                    "cluster-ca, provided or off",
                    other,
                ));
            }
        };
        Ok(KubeSettings {
            tls,
            worker_template_path: self
                .get_str("kubernetes.worker-template-path")?
                .filter(|p| !p.is_empty())
                .map(|p| expand_home(&p, &self.env)),
            worker_template,
            scheduler_template,
            name_template: name_template
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| DEFAULT_NAME_TEMPLATE.to_owned()),
            namespace: self
                .get_str("kubernetes.namespace")?
                .filter(|n| !n.is_empty()),
            count_max: self.get_u32("kubernetes.count.max")?,
            max_in_flight: self.get_u32("kubernetes.max-in-flight")?,
            dashboard_link: self
                .get_str("distributed.dashboard.link")?
                .unwrap_or_else(|| DEFAULT_DASHBOARD_LINK.to_owned()),
            adaptive_target_duration: self.get_timedelta("distributed.adaptive.target-duration")?,
            idle_timeout: self.get_timedelta("kubernetes.idle-timeout")?,
            controller_image: self
                .get_str("kubernetes.controller-image")?
                .filter(|i| !i.is_empty())
                .unwrap_or_else(default_controller_image),
            env: self.env_setting()?,
            count_start: self.get_u32("kubernetes.count.start")?.map(|n| n as usize),
            image: self.get_str("kubernetes.image")?.filter(|i| !i.is_empty()),
            resources,
            worker_command,
            scheduler_service_type: self
                .get_str("kubernetes.scheduler-service-type")?
                .filter(|t| !t.is_empty())
                .unwrap_or_else(|| DEFAULT_SERVICE_TYPE.to_owned()),
            resource_timeout,
            apply_default_affinity: self
                .get_str("kubernetes.apply-default-affinity")?
                .filter(|a| !a.is_empty())
                .unwrap_or_else(|| DEFAULT_AFFINITY.to_owned()),
        })
    }

    /// `kubernetes.env`: a mapping of variable names to values (numbers read as written).
    fn env_setting(&self) -> Result<BTreeMap<String, String>> {
        let invalid = |reason: String| Error::Config {
            origin: "kubernetes.env".into(),
            reason,
        };
        match self.get("kubernetes.env") {
            None => Ok(BTreeMap::new()),
            Some(Value::Object(map)) => map
                .iter()
                .map(|(k, v)| match v {
                    Value::String(s) => Ok((k.clone(), s.clone())),
                    Value::Number(_) | Value::Bool(_) => Ok((k.clone(), v.to_string())),
                    other => Err(invalid(format!(
                        "the value of {k} must be a string, not {other}"
                    ))),
                })
                .collect(),
            // The operator's list form: `[{"name": ..., "value": ...}]`.
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| {
                    let name = item.get("name").and_then(Value::as_str);
                    let value = item.get("value").and_then(Value::as_str);
                    match (name, value) {
                        (Some(n), Some(v)) => Ok((n.to_owned(), v.to_owned())),
                        _ => Err(invalid(format!(
                            "a list entry must be {{name: ..., value: ...}}, not {item}"
                        ))),
                    }
                })
                .collect(),
            Some(other) => Err(invalid(format!(
                "must be a mapping of variable names to values, not {other}"
            ))),
        }
    }
}

/// `~/x` with `$HOME` from `env`.
fn expand_home(path: &str, env: &[(String, String)]) -> PathBuf {
    let home = env
        .iter()
        .find(|(k, _)| k == "HOME")
        .map(|(_, v)| v.as_str());
    match (path.strip_prefix("~/"), home) {
        (Some(rest), Some(home)) => Path::new(home).join(rest),
        _ => PathBuf::from(path),
    }
}

/// The settings dask-kube reads from the Dask configuration; CLI flags override them.
#[derive(Debug, Clone, PartialEq)]
pub struct KubeSettings {
    /// `kubernetes.tls`: how the client, scheduler and workers talk (`cluster-ca`, the
    /// default; `provided`; `off`; or a boolean).
    pub tls: TlsMode,
    /// `kubernetes.worker-template-path`.
    pub worker_template_path: Option<PathBuf>,
    /// `kubernetes.worker-template` (an inline pod).
    pub worker_template: Option<Value>,
    /// `kubernetes.scheduler-template` (an inline pod).
    pub scheduler_template: Option<Value>,
    /// `kubernetes.name` / `kubernetes.worker-name`, default `dask-{user}-{uuid}`.
    pub name_template: String,
    /// `kubernetes.namespace`.
    pub namespace: Option<String>,
    /// `kubernetes.count.max`: no scale or adapt goes above it.
    pub count_max: Option<u32>,
    /// `kubernetes.max-in-flight`: most pod creations/deletions in flight at once (flow
    /// control moves below it on the API server's signals).
    pub max_in_flight: Option<u32>,
    /// `distributed.dashboard.link`.
    pub dashboard_link: String,
    /// `distributed.adaptive.target-duration`, passed to the scheduler pod when set.
    pub adaptive_target_duration: Option<String>,
    /// `kubernetes.idle-timeout`: the scheduler's `--idle-timeout` (off unless set, as in
    /// Dask); the cluster's controller pod deletes the cluster once the scheduler ends.
    pub idle_timeout: Option<String>,
    /// `kubernetes.controller-image`: the dask-kube image of the controller pod.
    pub controller_image: String,
    /// `kubernetes.env`: variables for the scheduler and the workers.
    pub env: BTreeMap<String, String>,
    /// `kubernetes.count.start`: workers to start with.
    pub count_start: Option<usize>,
    /// `kubernetes.image`: a worker pod from this image when no template is given.
    pub image: Option<String>,
    /// `kubernetes.resources`: that pod's resources.
    pub resources: Option<Value>,
    /// `kubernetes.worker-command`: that pod's command.
    pub worker_command: Option<WorkerCommand>,
    /// `kubernetes.scheduler-service-type`: the Service's type.
    pub scheduler_service_type: String,
    /// `kubernetes.resource-timeout`: seconds the scheduler pod may take to run.
    pub resource_timeout: Option<f64>,
    /// `kubernetes.apply-default-affinity`: `preferred`, `required` or `none`.
    pub apply_default_affinity: String,
}

/// Formats `distributed.dashboard.link` with `scheme`, `host`, `port` and the environment,
/// as `distributed.utils.format_dashboard_link` does.
pub fn format_dashboard_link(
    template: &str,
    host: &str,
    port: u16,
    env: &[(String, String)],
) -> Result<String> {
    crate::pyformat::format(template, "scheme, host, port", |field| match field {
        "scheme" => Some("http".to_owned()),
        "host" => Some(host.to_owned()),
        "port" => Some(port.to_string()),
        other => env.iter().find(|(k, _)| k == other).map(|(_, v)| v.clone()),
    })
    .map_err(|e| Error::Config {
        origin: "distributed.dashboard.link".into(),
        reason: format!("{template:?}: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;
    use serde_json::json;

    fn doc(origin: &str, value: Value) -> ConfigDocument {
        ConfigDocument {
            origin: origin.into(),
            value,
        }
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn later_files_override_earlier_ones_key_by_key() {
        let sources = ConfigSources {
            documents: vec![
                doc(
                    "/etc/dask/a.yaml",
                    json!({"kubernetes": {"namespace": "etc", "count": {"max": 5}}}),
                ),
                doc(
                    "~/.config/dask/b.yaml",
                    json!({"kubernetes": {"namespace": "home"}}),
                ),
            ],
            env: vec![],
        };
        let settings = DaskConfig::from_sources(&sources)
            .unwrap()
            .kube_settings()
            .unwrap();
        assert_eq!(settings.namespace.as_deref(), Some("home"));
        assert_eq!(settings.count_max, Some(5));
    }

    #[test]
    fn underscores_and_dashes_are_the_same_key() {
        let sources = ConfigSources {
            documents: vec![
                doc(
                    "a.yaml",
                    json!({"kubernetes": {"worker_template_path": "/a.yaml"}}),
                ),
                doc(
                    "b.yaml",
                    json!({"kubernetes": {"worker-template-path": "/b.yaml"}}),
                ),
            ],
            env: vec![],
        };
        let config = DaskConfig::from_sources(&sources).unwrap();
        assert_eq!(
            config.kube_settings().unwrap().worker_template_path,
            Some(PathBuf::from("/b.yaml"))
        );
        assert!(config.get("kubernetes.worker_template_path").is_some());
    }

    #[rstest]
    #[case::template_path(
        "DASK_KUBERNETES__WORKER_TEMPLATE_PATH", "/env/worker.yaml",
        |s: &KubeSettings| assert_eq!(s.worker_template_path, Some(PathBuf::from("/env/worker.yaml")))
    )]
    #[case::home_is_expanded(
        "DASK_KUBERNETES__WORKER_TEMPLATE_PATH", "~/w.yaml",
        |s: &KubeSettings| assert_eq!(s.worker_template_path, Some(PathBuf::from("/home/u/w.yaml")))
    )]
    #[case::namespace(
        "DASK_KUBERNETES__NAMESPACE", "env-ns",
        |s: &KubeSettings| assert_eq!(s.namespace.as_deref(), Some("env-ns"))
    )]
    #[case::count_max_is_a_number(
        "DASK_KUBERNETES__COUNT__MAX", "12",
        |s: &KubeSettings| assert_eq!(s.count_max, Some(12))
    )]
    #[case::name_documented_key(
        "DASK_KUBERNETES__WORKER_NAME", "team-{uuid}",
        |s: &KubeSettings| assert_eq!(s.name_template, "team-{uuid}")
    )]
    #[case::adaptive_target_duration(
        "DASK_DISTRIBUTED__ADAPTIVE__TARGET_DURATION", "500ms",
        |s: &KubeSettings| assert_eq!(s.adaptive_target_duration.as_deref(), Some("500ms"))
    )]
    #[case::adaptive_target_duration_number_is_seconds(
        "DASK_DISTRIBUTED__ADAPTIVE__TARGET_DURATION", "2",
        |s: &KubeSettings| assert_eq!(s.adaptive_target_duration.as_deref(), Some("2s"))
    )]
    #[case::dashboard_link(
        "DASK_DISTRIBUTED__DASHBOARD__LINK", "{scheme}://{host}:{port}/status?x={JUPYTERHUB_USER}",
        |s: &KubeSettings| assert_eq!(s.dashboard_link, "{scheme}://{host}:{port}/status?x={JUPYTERHUB_USER}")
    )]
    #[case::inline_template(
        "DASK_KUBERNETES__WORKER_TEMPLATE", "{'spec': {'containers': []}}",
        |s: &KubeSettings| assert_eq!(s.worker_template, Some(json!({"spec": {"containers": []}})))
    )]
    fn env_vars_set_kubernetes_keys(
        #[case] var: &str,
        #[case] value: &str,
        #[case] check: fn(&KubeSettings),
    ) {
        let sources = ConfigSources {
            documents: vec![doc(
                "a.yaml",
                json!({"kubernetes": {"namespace": "file", "worker-template-path": "/file.yaml"}}),
            )],
            env: env(&[(var, value), ("HOME", "/home/u")]),
        };
        check(
            &DaskConfig::from_sources(&sources)
                .unwrap()
                .kube_settings()
                .unwrap(),
        );
    }

    #[test]
    fn env_overrides_files() {
        let sources = ConfigSources {
            documents: vec![doc("a.yaml", json!({"kubernetes": {"namespace": "file"}}))],
            env: env(&[("DASK_KUBERNETES__NAMESPACE", "env")]),
        };
        let settings = DaskConfig::from_sources(&sources)
            .unwrap()
            .kube_settings()
            .unwrap();
        assert_eq!(settings.namespace.as_deref(), Some("env"));
    }

    #[test]
    fn code_key_name_wins_over_documented_key() {
        let sources = ConfigSources {
            documents: vec![doc(
                "a.yaml",
                json!({"kubernetes": {"name": "code-{uuid}", "worker-name": "docs-{uuid}"}}),
            )],
            env: vec![],
        };
        let settings = DaskConfig::from_sources(&sources)
            .unwrap()
            .kube_settings()
            .unwrap();
        assert_eq!(settings.name_template, "code-{uuid}");
    }

    #[test]
    fn defaults_without_any_source() {
        let settings = DaskConfig::from_sources(&ConfigSources::default())
            .unwrap()
            .kube_settings()
            .unwrap();
        assert_eq!(settings.name_template, DEFAULT_NAME_TEMPLATE);
        assert_eq!(settings.dashboard_link, DEFAULT_DASHBOARD_LINK);
        assert_eq!(settings.namespace, None);
        assert_eq!(settings.worker_template_path, None);
    }

    #[rstest]
    #[case::unset(json!({}), None)]
    #[case::null(json!(null), None)]
    #[case::empty_string(json!(""), None)]
    #[case::whole_seconds(json!(60), Some("60s"))]
    #[case::fractional_seconds(json!(0.5), Some("0.5s"))]
    #[case::string_as_written(json!("30m"), Some("30m"))]
    fn durations_read_as_dask_writes_them(#[case] value: Value, #[case] want: Option<&str>) {
        // The two duration keys are read by one rule.
        let value = if value == json!({}) {
            None
        } else {
            Some(value)
        };
        let mut kubernetes = serde_json::Map::new();
        let mut adaptive = serde_json::Map::new();
        if let Some(v) = value {
            kubernetes.insert("idle-timeout".into(), v.clone());
            adaptive.insert("target-duration".into(), v);
        }
        let config = DaskConfig::from_sources(&ConfigSources {
            documents: vec![doc(
                "d.yaml",
                json!({"kubernetes": kubernetes, "distributed": {"adaptive": adaptive}}),
            )],
            env: vec![],
        })
        .unwrap();
        let settings = config.kube_settings().unwrap();
        assert_eq!(settings.idle_timeout.as_deref(), want);
        assert_eq!(settings.adaptive_target_duration.as_deref(), want);
    }

    #[test]
    fn a_duration_of_another_kind_names_its_key() {
        let config = DaskConfig::from_sources(&ConfigSources {
            documents: vec![doc(
                "d.yaml",
                json!({"kubernetes": {"idle-timeout": ["1h"]}}),
            )],
            env: vec![],
        })
        .unwrap();
        let err = config.kube_settings().unwrap_err().to_string();
        assert!(err.contains("kubernetes.idle-timeout"), "{err}");
    }

    #[rstest]
    #[case::file_not_a_mapping(vec![doc("bad.yaml", json!(["x"]))], vec![], "bad.yaml")]
    #[case::count_not_a_number(vec![], env(&[("DASK_KUBERNETES__COUNT__MAX", "lots")]), "kubernetes.count.max")]
    #[case::template_not_a_mapping(vec![doc("a.yaml", json!({"kubernetes": {"worker-template": "pod.yaml"}}))], vec![], "kubernetes.worker-template")]
    fn bad_config_names_its_origin(
        #[case] documents: Vec<ConfigDocument>,
        #[case] env: Vec<(String, String)>,
        #[case] needle: &str,
    ) {
        let err = DaskConfig::from_sources(&ConfigSources { documents, env })
            .and_then(|c| c.kube_settings())
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle), "{err}");
    }

    #[test]
    fn reads_yaml_files_from_directories_in_name_order() {
        let etc = tempfile::tempdir().unwrap();
        let home = tempfile::tempdir().unwrap();
        std::fs::write(
            etc.path().join("b.yaml"),
            "kubernetes:\n  namespace: etc-b\n",
        )
        .unwrap();
        std::fs::write(
            etc.path().join("a.yml"),
            "kubernetes:\n  namespace: etc-a\n  count:\n    max: 3\n",
        )
        .unwrap();
        std::fs::write(etc.path().join("ignored.txt"), "not: used\n").unwrap();
        let user_dir = home.path().join(".config").join("dask");
        std::fs::create_dir_all(&user_dir).unwrap();
        std::fs::write(
            user_dir.join("kube.yaml"),
            "kubernetes:\n  worker_template_path: /w.yaml\n",
        )
        .unwrap();
        let extra = home.path().join("extra.yaml");
        std::fs::write(&extra, "kubernetes:\n  namespace: extra\n").unwrap();
        let env = env(&[
            ("DASK_ROOT_CONFIG", etc.path().to_str().unwrap()),
            ("DASK_CONFIG", extra.to_str().unwrap()),
        ]);
        let paths = ConfigSources::search_path(&env, Some(home.path()));
        let settings = DaskConfig::from_sources(&ConfigSources::read(&paths, env).unwrap())
            .unwrap()
            .kube_settings()
            .unwrap();
        assert_eq!(settings.namespace.as_deref(), Some("extra"));
        assert_eq!(settings.count_max, Some(3));
        assert_eq!(
            settings.worker_template_path,
            Some(PathBuf::from("/w.yaml"))
        );
    }

    #[test]
    fn invalid_yaml_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("broken.yaml"), "kubernetes: [unclosed\n").unwrap();
        let err = ConfigSources::read(&[dir.path().to_owned()], vec![])
            .unwrap_err()
            .to_string();
        assert!(err.contains("broken.yaml"), "{err}");
    }

    #[rstest]
    #[case::default(DEFAULT_DASHBOARD_LINK, "http://127.0.0.1:8787/status")]
    #[case::env_var(
        "{scheme}://{host}:{port}/user/{JUPYTERHUB_USER}/proxy",
        "http://127.0.0.1:8787/user/ann/proxy"
    )]
    fn dashboard_links(#[case] template: &str, #[case] expected: &str) {
        let env = env(&[("JUPYTERHUB_USER", "ann")]);
        assert_eq!(
            format_dashboard_link(template, "127.0.0.1", 8787, &env).unwrap(),
            expected
        );
    }

    #[test]
    fn dashboard_link_with_unknown_field_is_an_error() {
        let err = format_dashboard_link("{scheme}://{nope}", "h", 1, &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("distributed.dashboard.link"), "{err}");
    }

    #[rstest::rstest]
    #[case::none(None, true)]
    #[case::empty(Some(""), true)]
    #[case::a_digest(
        Some("sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"),
        true
    )]
    #[case::upper_case(
        Some("sha256:0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef"),
        false
    )]
    #[case::short(Some("sha256:0123"), false)]
    #[case::another_algorithm(
        Some("sha512:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"),
        false
    )]
    #[case::a_tag(Some("latest"), false)]
    fn build_time_digests_are_checked(#[case] digest: Option<&str>, #[case] valid: bool) {
        assert_eq!(digest_is_valid(digest), valid);
    }

    #[rstest::rstest]
    #[case::pinned(Some("sha256:ab"), "ghcr.io/dask-on-k8s/dask-kube:0.1.0@sha256:ab")]
    #[case::unpinned(None, "ghcr.io/dask-on-k8s/dask-kube:0.1.0")]
    #[case::empty(Some(""), "ghcr.io/dask-on-k8s/dask-kube:0.1.0")]
    fn the_controller_image_is_pinned_by_the_build_digest(
        #[case] digest: Option<&str>,
        #[case] reference: &str,
    ) {
        assert_eq!(
            image_reference("ghcr.io/dask-on-k8s/dask-kube:0.1.0", digest),
            reference
        );
    }
}
