//! The defaults algorithm: what a Dask worker pod spec needs, applied to raw JSON.
//!
//! Everything works on `serde_json::Value` and edits only the fields it owns, so fields
//! this crate does not know (newer Kubernetes API fields, other tools' annotations)
//! survive byte for byte, and a second pass over the result changes nothing.

use crate::command::{self, WorkerCommandLine};
use crate::quantity::{
    self, MemoryLimit, QuantityError, format_dask_bytes, format_k8s_cpu, format_k8s_memory,
};
use crate::settings::{OnMismatch, Toleration, WorkerDefaults};
use crate::{Error, Result};
use serde_json::{Map, Value, json};

/// Env var that carries the pod name into the worker's `--name`.
pub const WORKER_NAME_ENV: &str = "DASK_WORKER_NAME";
/// `--name` value that Kubernetes expands from [`WORKER_NAME_ENV`].
pub const WORKER_NAME_FROM_ENV: &str = "$(DASK_WORKER_NAME)";

/// What the pod's kind allows for `restartPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicyRule {
    /// Bare pods and Job templates: `Never`, so a worker whose scheduler is gone ends
    /// instead of restarting forever.
    Never,
    /// Deployment/ReplicaSet/StatefulSet/DaemonSet templates (the API only allows
    /// `Always`) and pods those controllers own: leave it.
    Keep,
}

/// How a pod spec is to be defaulted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodSpecRules {
    /// `restartPolicy` handling.
    pub restart_policy: RestartPolicyRule,
    /// Whether to name workers after their pod (off where an operator names them).
    pub name_workers_after_pod: bool,
}

impl PodSpecRules {
    /// Rules for a bare worker pod, such as dask-kube creates.
    pub const BARE_POD: PodSpecRules = PodSpecRules {
        restart_policy: RestartPolicyRule::Never,
        name_workers_after_pod: true,
    };
}

/// The result of defaulting: whether anything changed, and warnings for the user.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Defaulted {
    /// Something was added or rewritten.
    pub changed: bool,
    /// Parts left alone, and why.
    pub warnings: Vec<String>,
}

/// Applies the worker defaults to a pod spec (`path` names it in messages, e.g.
/// `spec.template.spec`).
///
/// # Example
/// ```
/// use dask_worker_spec::{apply_worker_defaults, PodSpecRules, WorkerDefaults};
/// let mut spec = serde_json::json!({"containers": [{
///     "name": "worker", "image": "ghcr.io/dask/dask",
///     "args": ["dask", "worker", "--nthreads", "2", "--memory-limit", "6GB"],
/// }]});
/// let outcome = apply_worker_defaults(&mut spec, "spec", PodSpecRules::BARE_POD,
///     &WorkerDefaults::default()).unwrap();
/// assert!(outcome.changed);
/// assert_eq!(spec["containers"][0]["resources"]["limits"]["memory"], "6G");
/// assert_eq!(spec["restartPolicy"], "Never");
/// ```
pub fn apply_worker_defaults(
    spec: &mut Value,
    path: &str,
    rules: PodSpecRules,
    settings: &WorkerDefaults,
) -> Result<Defaulted> {
    let Some(spec_map) = spec.as_object_mut() else {
        return Err(Error::malformed(path, "must be an object"));
    };
    let mut outcome = Defaulted::default();

    outcome.changed |= ensure_tolerations(spec_map, path, &settings.tolerations)?;

    if rules.restart_policy == RestartPolicyRule::Never
        && spec_map.get("restartPolicy").and_then(Value::as_str) != Some("Never")
    {
        spec_map.insert("restartPolicy".into(), json!("Never"));
        outcome.changed = true;
    }

    let mut problems = Vec::new();
    let mut worker_containers = 0;
    match spec_map.get_mut("containers") {
        None | Some(Value::Null) => {}
        Some(Value::Array(containers)) => {
            for (i, container) in containers.iter_mut().enumerate() {
                let container_path = format!("{path}.containers[{i}]");
                match default_container(container, &container_path, rules, settings) {
                    Ok(Some(c)) => {
                        worker_containers += 1;
                        outcome.changed |= c.changed;
                        outcome.warnings.extend(c.warnings);
                    }
                    Ok(None) => {}
                    Err(e) => problems.push(e),
                }
            }
        }
        Some(_) => {
            return Err(Error::malformed(
                format!("{path}.containers"),
                "must be an array",
            ));
        }
    }
    if problems.len() == 1
        && let Some(problem) = problems.pop()
    {
        return Err(problem);
    }
    if !problems.is_empty() {
        return Err(Error::Several(problems));
    }
    if worker_containers == 0 {
        outcome.warnings.push(format!(
            "{path}: no container runs a Dask worker (`dask worker`, `dask-worker` or \
             `python -m distributed.cli.dask_worker`); only pod-level defaults were applied"
        ));
    }
    Ok(outcome)
}

/// The comparable identity of a toleration, with the API's defaults filled in.
fn toleration_identity(t: &Value) -> Option<(String, String, String, String, Option<i64>)> {
    let map = t.as_object()?;
    let s = |k: &str| {
        map.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let operator = match s("operator") {
        o if o.is_empty() => "Equal".to_owned(),
        o => o,
    };
    Some((
        s("key"),
        operator,
        s("value"),
        s("effect"),
        map.get("tolerationSeconds").and_then(Value::as_i64),
    ))
}

fn toleration_json(t: &Toleration) -> Value {
    let mut map = Map::new();
    if !t.key.is_empty() {
        map.insert("key".into(), json!(t.key));
    }
    map.insert("operator".into(), json!(t.operator));
    if !t.value.is_empty() {
        map.insert("value".into(), json!(t.value));
    }
    if !t.effect.is_empty() {
        map.insert("effect".into(), json!(t.effect));
    }
    if let Some(seconds) = t.toleration_seconds {
        map.insert("tolerationSeconds".into(), json!(seconds));
    }
    Value::Object(map)
}

/// Makes each wanted toleration present exactly once; keeps every other toleration.
fn ensure_tolerations(
    spec: &mut Map<String, Value>,
    path: &str,
    wanted: &[Toleration],
) -> Result<bool> {
    if wanted.is_empty() {
        return Ok(false);
    }
    let entry = spec.entry("tolerations").or_insert(Value::Null);
    if entry.is_null() {
        *entry = Value::Array(Vec::new());
    }
    let Value::Array(tolerations) = entry else {
        return Err(Error::malformed(
            format!("{path}.tolerations"),
            "must be an array",
        ));
    };
    let mut changed = false;
    for want in wanted {
        let want_json = toleration_json(want);
        let want_id = toleration_identity(&want_json);
        let mut seen = false;
        let before = tolerations.len();
        tolerations.retain(|t| {
            if toleration_identity(t) == want_id {
                let keep = !seen;
                seen = true;
                keep
            } else {
                true
            }
        });
        changed |= tolerations.len() != before;
        if !seen {
            tolerations.push(want_json);
            changed = true;
        }
    }
    Ok(changed)
}

/// Count-like flag values (`--nthreads`, `--nworkers`).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Count {
    Absent,
    Exactly(u64),
    /// A value that gives no count (`auto`, negative `--nworkers`, `--nthreads 0`), and why.
    Unknown(String),
}

fn read_string_array(
    container: &Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<Option<Vec<String>>> {
    match container.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str().map(str::to_owned).ok_or_else(|| {
                    Error::malformed(format!("{path}.{key}"), "must be an array of strings")
                })
            })
            .collect::<Result<Vec<_>>>()
            .map(Some),
        Some(_) => Err(Error::malformed(
            format!("{path}.{key}"),
            "must be an array of strings",
        )),
    }
}

/// Reads `resources.<kind>.<resource>` as text (numbers are accepted as written).
fn read_quantity(
    container: &Map<String, Value>,
    kind: &str,
    resource: &str,
    path: &str,
) -> Result<Option<String>> {
    let field = |suffix: &str| format!("{path}.resources{suffix}");
    let resources = match container.get("resources") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(r)) => r,
        Some(_) => return Err(Error::malformed(field(""), "must be an object")),
    };
    let section = match resources.get(kind) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(s)) => s,
        Some(_) => {
            return Err(Error::malformed(
                field(&format!(".{kind}")),
                "must be an object",
            ));
        }
    };
    match section.get(resource) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(_) => Err(Error::malformed(
            field(&format!(".{kind}.{resource}")),
            "must be a quantity string",
        )),
    }
}

fn write_quantity(container: &mut Map<String, Value>, kind: &str, resource: &str, value: String) {
    let resources = container.entry("resources").or_insert_with(|| json!({}));
    if !resources.is_object() {
        *resources = json!({});
    }
    if let Some(resources) = resources.as_object_mut() {
        let section = resources.entry(kind).or_insert_with(|| json!({}));
        if !section.is_object() {
            *section = json!({});
        }
        if let Some(section) = section.as_object_mut() {
            section.insert(resource.to_owned(), Value::String(value));
        }
    }
}

/// One container's resource dimension, in the unit the planner counts in: bytes for
/// memory, millicores for CPU; the flag per worker process (bytes, threads).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Sizes {
    pub flag: Option<u64>,
    pub limit: Option<u64>,
    pub request: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resource {
    Memory,
    Cpu,
}

impl Resource {
    fn name(self) -> &'static str {
        match self {
            Resource::Memory => "memory",
            Resource::Cpu => "cpu",
        }
    }

    /// What the container needs for `per_worker` x `nworkers`.
    fn total(self, per_worker: u64, nworkers: u64) -> Option<u64> {
        let n = per_worker.checked_mul(nworkers)?;
        match self {
            Resource::Memory => Some(n),
            Resource::Cpu => n.checked_mul(1_000),
        }
    }

    /// The per-worker flag value a container size implies; `None` when it implies none
    /// (less than a byte per worker).
    fn derive(self, container: u64, nworkers: u64) -> Option<u64> {
        match self {
            Resource::Memory => container.checked_div(nworkers).filter(|b| *b > 0),
            Resource::Cpu => Some(container.checked_div(nworkers.checked_mul(1_000)?)?.max(1)),
        }
    }

    /// Flags and size agree when the size is exactly flags x nworkers, or the flag is what
    /// the size implies (the rounding `derive` does, so derived flags are stable).
    fn agree(self, flag: u64, container: u64, nworkers: u64) -> bool {
        self.total(flag, nworkers) == Some(container)
            || self.derive(container, nworkers) == Some(flag)
    }
}

/// What to write for one dimension; `None` leaves a field as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Plan {
    pub flag: Option<u64>,
    pub limit: Option<u64>,
    pub request: Option<u64>,
}

/// A disagreement between flags and resources that the settings say to refuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Disagreement {
    pub flag: u64,
    pub container: u64,
    pub from_request: bool,
}

/// The pure decision for one dimension of one container.
pub(crate) fn plan(
    resource: Resource,
    sizes: Sizes,
    nworkers: u64,
    on_mismatch: OnMismatch,
    requests_equal_limits: bool,
) -> std::result::Result<Plan, Disagreement> {
    let effective = sizes.limit.or(sizes.request);
    let mut plan = Plan::default();
    // Fill the limit (from `limit_value`) and a missing request.
    let fill = |plan: &mut Plan, limit_value: u64| {
        if sizes.limit != Some(limit_value) {
            plan.limit = Some(limit_value);
        }
        match sizes.request {
            None if requests_equal_limits => plan.request = Some(limit_value),
            // Requests above the limit are invalid; requests that equalled the old limit
            // (Guaranteed QoS) follow the new one rather than silently becoming Burstable.
            Some(request) if request > limit_value => plan.request = Some(limit_value),
            Some(request) if sizes.limit == Some(request) && request != limit_value => {
                plan.request = Some(limit_value);
            }
            _ => {}
        }
    };
    match (sizes.flag, effective) {
        (None, None) => {}
        (Some(flag), None) => {
            if let Some(total) = resource.total(flag, nworkers) {
                fill(&mut plan, total);
            }
        }
        (None, Some(container)) => {
            plan.flag = resource.derive(container, nworkers);
            if plan.flag.is_some() {
                fill(&mut plan, sizes.limit.unwrap_or(container));
            }
        }
        (Some(flag), Some(container)) if resource.agree(flag, container, nworkers) => {
            fill(&mut plan, sizes.limit.unwrap_or(container));
        }
        (Some(flag), Some(container)) => match on_mismatch {
            OnMismatch::Reject => {
                return Err(Disagreement {
                    flag,
                    container,
                    from_request: sizes.limit.is_none(),
                });
            }
            OnMismatch::UseResources => {
                plan.flag = resource.derive(container, nworkers);
                fill(&mut plan, sizes.limit.unwrap_or(container));
            }
            OnMismatch::UseFlags => {
                if let Some(total) = resource.total(flag, nworkers) {
                    fill(&mut plan, total);
                }
            }
        },
    }
    Ok(plan)
}

fn parse_count(line: &WorkerCommandLine, flags: &[&str], container: &str) -> Result<Count> {
    let mut value = None;
    let mut used = "";
    for flag in flags {
        if let Some(v) = line.flag(flag).map_err(|source| Error::CommandLine {
            container: container.to_owned(),
            source,
        })? {
            value = Some(v);
            used = flag;
        }
    }
    let Some(value) = value else {
        return Ok(Count::Absent);
    };
    let invalid = || Error::InvalidCount {
        container: container.to_owned(),
        flag: used.to_owned(),
        value: value.clone(),
    };
    if value.trim() == "auto" {
        return Ok(Count::Unknown(format!("{used} auto is decided at runtime")));
    }
    let number: i64 = value.trim().parse().map_err(|_| invalid())?;
    match number {
        n if n > 0 => Ok(Count::Exactly(n.unsigned_abs())),
        0 if used == command::NTHREADS => Ok(Count::Unknown(format!(
            "{used} 0 means one thread per core, decided at runtime"
        ))),
        n if n < 0 && used != command::NTHREADS => Ok(Count::Unknown(format!(
            "{used} {n} counts from the machine's cores, decided at runtime"
        ))),
        _ => Err(invalid()),
    }
}

struct ContainerOutcome {
    changed: bool,
    warnings: Vec<String>,
}

/// Defaults one container; `Ok(None)` when it does not run a Dask worker.
fn default_container(
    container: &mut Value,
    path: &str,
    rules: PodSpecRules,
    settings: &WorkerDefaults,
) -> Result<Option<ContainerOutcome>> {
    let Some(map) = container.as_object_mut() else {
        return Err(Error::malformed(path, "must be an object"));
    };
    let name = map
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("<unnamed>")
        .to_owned();
    let original_command = read_string_array(map, "command", path)?;
    let original_args = read_string_array(map, "args", path)?;
    let mut command_words = original_command.clone().unwrap_or_default();
    let mut arg_words = original_args.clone().unwrap_or_default();
    let Some(mut line) = WorkerCommandLine::find(&command_words, &arg_words) else {
        return Ok(None);
    };
    let mut warnings = Vec::new();
    let cmdline_error = |source| Error::CommandLine {
        container: name.clone(),
        source,
    };

    let nthreads = parse_count(&line, &[command::NTHREADS], &name)?;
    let nworkers = parse_count(&line, &[command::NPROCS, command::NWORKERS], &name)?;
    let memory_flag = match line.flag(command::MEMORY_LIMIT).map_err(cmdline_error)? {
        None => None,
        Some(text) => Some(
            MemoryLimit::parse(&text).map_err(|source| Error::InvalidFlag {
                container: name.clone(),
                flag: command::MEMORY_LIMIT.to_owned(),
                source,
            })?,
        ),
    };
    let quantity =
        |kind: &str, resource: Resource, map: &Map<String, Value>| -> Result<Option<u64>> {
            let Some(text) = read_quantity(map, kind, resource.name(), path)? else {
                return Ok(None);
            };
            let parsed: std::result::Result<u64, QuantityError> = match resource {
                Resource::Memory => quantity::parse_k8s_memory(&text),
                Resource::Cpu => quantity::parse_k8s_cpu_millis(&text),
            };
            parsed.map(Some).map_err(|source| Error::InvalidQuantity {
                container: name.clone(),
                field: format!("resources.{kind}.{}", resource.name()),
                source,
            })
        };
    let memory = Sizes {
        flag: None,
        limit: quantity("limits", Resource::Memory, map)?,
        request: quantity("requests", Resource::Memory, map)?,
    };
    let cpu = Sizes {
        flag: None,
        limit: quantity("limits", Resource::Cpu, map)?,
        request: quantity("requests", Resource::Cpu, map)?,
    };

    let mut plans: Vec<(Resource, Plan)> = Vec::new();
    let mut problems = Vec::new();
    match &nworkers {
        Count::Unknown(why) => warnings.push(format!(
            "container {name:?}: {why}; resources and --nthreads/--memory-limit left as they are"
        )),
        Count::Absent | Count::Exactly(_) => {
            let n = match nworkers {
                Count::Exactly(n) => n,
                _ => 1,
            };
            let memory_sizes = match &memory_flag {
                Some(MemoryLimit::Bytes(b)) => Some(Sizes {
                    flag: Some(*b),
                    ..memory
                }),
                None => Some(memory),
                Some(other) => {
                    let why = match other {
                        MemoryLimit::Auto => {
                            "auto is a share of the machine's memory decided at runtime".to_owned()
                        }
                        MemoryLimit::Disabled => "0 disables memory management".to_owned(),
                        _ => format!("{other} is a fraction of the machine's memory"),
                    };
                    warnings.push(format!(
                        "container {name:?}: --memory-limit {why}, not a byte count; memory resources left as they are"
                    ));
                    None
                }
            };
            let cpu_sizes = match &nthreads {
                Count::Exactly(t) => Some(Sizes {
                    flag: Some(*t),
                    ..cpu
                }),
                Count::Absent => Some(cpu),
                Count::Unknown(why) => {
                    warnings.push(format!(
                        "container {name:?}: {why}; cpu resources left as they are"
                    ));
                    None
                }
            };
            for (resource, sizes) in [(Resource::Memory, memory_sizes), (Resource::Cpu, cpu_sizes)]
            {
                let Some(sizes) = sizes else { continue };
                match plan(
                    resource,
                    sizes,
                    n,
                    settings.on_mismatch,
                    settings.requests_equal_limits,
                ) {
                    Ok(p) => plans.push((resource, p)),
                    Err(d) => problems.push(mismatch_error(&name, resource, d, n)),
                }
            }
        }
    }
    if problems.len() == 1 {
        if let Some(problem) = problems.pop() {
            return Err(problem);
        }
    } else if !problems.is_empty() {
        return Err(Error::Several(problems));
    }

    // Flags first (re-locating the worker after each edit), then resources.
    let mut flag_edits: Vec<(&str, String)> = Vec::new();
    for (resource, p) in &plans {
        if let Some(flag) = p.flag {
            match resource {
                Resource::Memory => {
                    flag_edits.push((command::MEMORY_LIMIT, format_dask_bytes(flag)))
                }
                Resource::Cpu => flag_edits.push((command::NTHREADS, flag.to_string())),
            }
        }
    }
    flag_edits.sort_by_key(|(flag, _)| *flag != command::NTHREADS);
    if !line.has_flag(command::DEATH_TIMEOUT) {
        flag_edits.push((command::DEATH_TIMEOUT, settings.death_timeout.to_string()));
    }
    let name_after_pod = settings.worker_name_from_pod
        && rules.name_workers_after_pod
        && !line.has_flag(command::NAME);
    if name_after_pod {
        flag_edits.push((command::NAME, WORKER_NAME_FROM_ENV.to_owned()));
    }
    let mut changed = false;
    for (flag, value) in &flag_edits {
        changed |= line
            .set_flag(&mut command_words, &mut arg_words, flag, value)
            .map_err(cmdline_error)?;
        line = WorkerCommandLine::find(&command_words, &arg_words).ok_or_else(|| {
            Error::malformed(path, "the worker command line was lost while editing")
        })?;
    }
    if original_command
        .as_ref()
        .map_or(!command_words.is_empty(), |c| *c != command_words)
    {
        map.insert("command".into(), json!(command_words));
    }
    if original_args
        .as_ref()
        .map_or(!arg_words.is_empty(), |a| *a != arg_words)
    {
        map.insert("args".into(), json!(arg_words));
    }

    for (resource, p) in plans {
        let format = |v: u64| match resource {
            Resource::Memory => format_k8s_memory(v),
            Resource::Cpu => format_k8s_cpu(v),
        };
        if let Some(limit) = p.limit {
            write_quantity(map, "limits", resource.name(), format(limit));
            changed = true;
        }
        if let Some(request) = p.request {
            write_quantity(map, "requests", resource.name(), format(request));
            changed = true;
        }
    }

    if name_after_pod {
        changed |= ensure_worker_name_env(map, path)?;
    }
    Ok(Some(ContainerOutcome { changed, warnings }))
}

fn ensure_worker_name_env(container: &mut Map<String, Value>, path: &str) -> Result<bool> {
    let env = container.entry("env").or_insert(Value::Null);
    if env.is_null() {
        *env = Value::Array(Vec::new());
    }
    let Value::Array(env) = env else {
        return Err(Error::malformed(format!("{path}.env"), "must be an array"));
    };
    if env
        .iter()
        .any(|e| e.get("name").and_then(Value::as_str) == Some(WORKER_NAME_ENV))
    {
        return Ok(false);
    }
    env.push(json!({
        "name": WORKER_NAME_ENV,
        "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}
    }));
    Ok(true)
}

fn mismatch_error(container: &str, resource: Resource, d: Disagreement, nworkers: u64) -> Error {
    let source = if d.from_request { "requests" } else { "limits" };
    let message = match resource {
        Resource::Memory => {
            let flag_total = d.flag.saturating_mul(nworkers);
            let derived = Resource::Memory
                .derive(d.container, nworkers)
                .map_or_else(|| "a larger size".to_owned(), format_dask_bytes);
            format!(
                "--memory-limit {} x --nworkers {nworkers} = {} ({flag_total} bytes), but \
                 resources.{source}.memory is {} ({} bytes); make them agree (--memory-limit {derived} \
                 or resources.{source}.memory {}), or set the policy's onMismatch to useResources or useFlags",
                format_dask_bytes(d.flag),
                format_k8s_memory(flag_total),
                format_k8s_memory(d.container),
                d.container,
                format_k8s_memory(flag_total),
            )
        }
        Resource::Cpu => {
            let flag_total = d.flag.saturating_mul(nworkers);
            let derived = Resource::Cpu.derive(d.container, nworkers).unwrap_or(1);
            format!(
                "--nthreads {} x --nworkers {nworkers} = {flag_total} CPU, but resources.{source}.cpu \
                 is {}; make them agree (--nthreads {derived} or resources.{source}.cpu {flag_total}), \
                 or set the policy's onMismatch to useResources or useFlags",
                d.flag,
                format_k8s_cpu(d.container),
            )
        }
    };
    Error::Mismatch {
        container: container.to_owned(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    const GB: u64 = 1_000_000_000;

    fn sizes(flag: Option<u64>, limit: Option<u64>, request: Option<u64>) -> Sizes {
        Sizes {
            flag,
            limit,
            request,
        }
    }
    fn p(flag: Option<u64>, limit: Option<u64>, request: Option<u64>) -> Plan {
        Plan {
            flag,
            limit,
            request,
        }
    }

    #[rstest]
    #[case::nothing_known(Resource::Memory, sizes(None, None, None), 1, p(None, None, None))]
    #[case::flag_only_sets_limit_and_request(Resource::Memory, sizes(Some(6 * GB), None, None), 1, p(None, Some(6 * GB), Some(6 * GB)))]
    #[case::flag_times_nworkers(Resource::Memory, sizes(Some(3 * GB), None, None), 2, p(None, Some(6 * GB), Some(6 * GB)))]
    #[case::limit_only_derives_flag(Resource::Memory, sizes(None, Some(6 * GB), None), 1, p(Some(6 * GB), None, Some(6 * GB)))]
    #[case::limit_split_between_workers(Resource::Memory, sizes(None, Some(6 * GB), Some(6 * GB)), 4, p(Some(1_500_000_000), None, None))]
    #[case::odd_bytes_floor(
        Resource::Memory,
        sizes(None, Some(7), None),
        2,
        p(Some(3), None, Some(7))
    )]
    #[case::too_small_to_split(
        Resource::Memory,
        sizes(None, Some(1), None),
        2,
        p(None, None, None)
    )]
    #[case::request_only_becomes_limit(Resource::Memory, sizes(None, None, Some(4 * GB)), 1, p(Some(4 * GB), Some(4 * GB), None))]
    #[case::agree_exactly(Resource::Memory, sizes(Some(6 * GB), Some(6 * GB), Some(6 * GB)), 1, p(None, None, None))]
    #[case::agree_keeps_lower_request(Resource::Memory, sizes(Some(6 * GB), Some(6 * GB), Some(2 * GB)), 1, p(None, None, None))]
    #[case::agree_by_floor(
        Resource::Memory,
        sizes(Some(3), Some(7), Some(7)),
        2,
        p(None, None, None)
    )]
    #[case::cpu_flag_only(
        Resource::Cpu,
        sizes(Some(2), None, None),
        1,
        p(None, Some(2_000), Some(2_000))
    )]
    #[case::cpu_threads_times_workers(
        Resource::Cpu,
        sizes(Some(2), None, None),
        3,
        p(None, Some(6_000), Some(6_000))
    )]
    #[case::cpu_limit_derives_threads(
        Resource::Cpu,
        sizes(None, Some(4_000), None),
        2,
        p(Some(2), None, Some(4_000))
    )]
    #[case::cpu_fraction_rounds_down(
        Resource::Cpu,
        sizes(None, Some(1_500), Some(1_500)),
        1,
        p(Some(1), None, None)
    )]
    #[case::cpu_below_one_is_one_thread(
        Resource::Cpu,
        sizes(None, Some(500), Some(500)),
        1,
        p(Some(1), None, None)
    )]
    #[case::cpu_derived_flag_agrees(
        Resource::Cpu,
        sizes(Some(1), Some(1_500), Some(1_500)),
        1,
        p(None, None, None)
    )]
    fn plans(
        #[case] resource: Resource,
        #[case] sizes: Sizes,
        #[case] nworkers: u64,
        #[case] expected: Plan,
    ) {
        assert_eq!(
            plan(resource, sizes, nworkers, OnMismatch::Reject, true),
            Ok(expected)
        );
    }

    #[rstest]
    #[case::reject(OnMismatch::Reject, Err(Disagreement { flag: 4 * GB, container: 6 * GB, from_request: false }))]
    #[case::use_resources(OnMismatch::UseResources, Ok(p(Some(6 * GB), None, None)))]
    #[case::use_flags(OnMismatch::UseFlags, Ok(p(None, Some(4 * GB), Some(4 * GB))))]
    fn mismatch_modes(
        #[case] mode: OnMismatch,
        #[case] expected: std::result::Result<Plan, Disagreement>,
    ) {
        let got = plan(
            Resource::Memory,
            sizes(Some(4 * GB), Some(6 * GB), Some(6 * GB)),
            1,
            mode,
            true,
        );
        assert_eq!(got, expected);
    }

    #[rstest]
    #[case::guaranteed_request_follows_new_limit(
        sizes(Some(4), Some(2_000), Some(2_000)),
        p(None, Some(4_000), Some(4_000))
    )]
    #[case::burstable_request_kept(
        sizes(Some(4), Some(2_000), Some(1_000)),
        p(None, Some(4_000), None)
    )]
    #[case::request_above_new_limit_lowered(
        sizes(Some(1), Some(2_000), Some(2_000)),
        p(None, Some(1_000), Some(1_000))
    )]
    fn use_flags_keeps_qos_class(#[case] before: Sizes, #[case] expected: Plan) {
        assert_eq!(
            plan(Resource::Cpu, before, 1, OnMismatch::UseFlags, true),
            Ok(expected)
        );
    }

    #[test]
    fn requests_left_alone_when_guaranteed_qos_is_off() {
        let got = plan(
            Resource::Memory,
            sizes(Some(6 * GB), None, None),
            1,
            OnMismatch::Reject,
            false,
        );
        assert_eq!(got, Ok(p(None, Some(6 * GB), None)));
    }

    proptest::proptest! {
        /// Whatever a plan writes, planning again on the result writes nothing.
        #[test]
        fn plans_are_idempotent(
            cpu in proptest::bool::ANY,
            flag in proptest::option::of(1u64..5_000),
            limit in proptest::option::of(1u64..50_000),
            request in proptest::option::of(1u64..50_000),
            nworkers in 1u64..5,
            mode in proptest::sample::select(vec![OnMismatch::Reject, OnMismatch::UseResources, OnMismatch::UseFlags]),
            guaranteed in proptest::bool::ANY,
        ) {
            let resource = if cpu { Resource::Cpu } else { Resource::Memory };
            let before = sizes(flag, limit, request);
            if let Ok(first) = plan(resource, before, nworkers, mode, guaranteed) {
                let after = Sizes {
                    flag: first.flag.or(before.flag),
                    limit: first.limit.or(before.limit),
                    request: first.request.or(before.request),
                };
                let second = plan(resource, after, nworkers, mode, guaranteed);
                proptest::prop_assert_eq!(second, Ok(Plan::default()));
            }
        }
    }
}
