//! The defaults algorithm: what a Dask worker pod spec needs, applied to raw JSON.
//!
//! Everything works on `serde_json::Value` and edits only the fields it owns, so fields
//! this crate does not know (newer Kubernetes API fields, other tools' annotations)
//! survive byte for byte, and a second pass over the result changes nothing.
//!
//! Flags are read as the worker will read them: variables resolved from the container's
//! env where the pod says their value (`variables`), bytes as Dask's own `parse_bytes`
//! counts them (`quantity`). The rules, in one place:
//! - a flag at Dask's default (`--memory-limit auto`, `--nthreads 0`) is an absent flag;
//! - container memory = `--memory-limit` x `--nworkers` + `memoryHeadroom` where the policy
//!   derives either side; values the user gave both agree when the container holds the
//!   workers and at most the headroom more;
//! - a `--memory-limit` below [`MIN_WORKER_MEMORY_BYTES`] is a unit mistake and refused;
//! - what is only known at runtime is left alone with a warning, everything else defaulted.

use crate::affinity::{self, DaskComponent};
use crate::command::{self, ArgvField, Invocation, WorkerCommandLine};
use crate::quantity::{
    self, MemoryLimit, QuantityError, format_dask_bytes, format_k8s_cpu, format_k8s_memory,
};
use crate::settings::{OnMismatch, Toleration, WorkerDefaults};
use crate::variables::{ContainerEnv, ContainerResources, Expansion, ResourceField};
use crate::{Error, Result};
use serde_json::{Map, Value, json};

/// Smallest `--memory-limit` (bytes per worker) a Dask worker can run in. Measured with
/// distributed 2026.8.0 on Python 3.11: an idle worker process holds 64.5 MB; below about
/// 68 MB the nanny restarts it in a loop (its 95% terminate threshold) and below about 81 MB
/// it starts paused (80%) and never runs a task (75 MB: paused; 90 MB: runs). 64 MiB is
/// under both, so the policy refuses only values no worker runs with, which are unit
/// mistakes: `--memory-limit 2.5` is 2 bytes, `4096` is 4 kB, and an env var from
/// `resourceFieldRef` with divisor `1Mi` is a count of MiB that Dask reads as bytes.
pub const MIN_WORKER_MEMORY_BYTES: u64 = 64 << 20;

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
/// // 6 GB for the worker and the default memoryHeadroom (256Mi): 6,268,435,456 bytes.
/// assert_eq!(spec["containers"][0]["resources"]["limits"]["memory"], "6121519Ki");
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
    outcome.changed |= affinity::apply_to_spec(
        spec_map,
        path,
        DaskComponent::Worker,
        settings.apply_default_affinity,
    )?;

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

/// Whether `t` is the toleration `want`, with the API's default operator (`Equal`) filled
/// in on both sides. Compares the key first: most tolerations differ there, and this runs
/// for every toleration of every worker pod.
fn is_toleration(t: &Value, want: &Toleration) -> bool {
    let Some(map) = t.as_object() else {
        return false;
    };
    let text = |k: &str| map.get(k).and_then(Value::as_str).unwrap_or_default();
    text("key") == want.key
        && with_default_operator(text("operator")) == with_default_operator(&want.operator)
        && text("value") == want.value
        && text("effect") == want.effect
        && map.get("tolerationSeconds").and_then(Value::as_i64) == want.toleration_seconds
}

fn with_default_operator(operator: &str) -> &str {
    if operator.is_empty() {
        "Equal"
    } else {
        operator
    }
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
pub(crate) fn ensure_tolerations(
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
        let mut seen = false;
        let before = tolerations.len();
        tolerations.retain(|t| {
            if is_toleration(t, want) {
                let keep = !seen;
                seen = true;
                keep
            } else {
                true
            }
        });
        changed |= tolerations.len() != before;
        if !seen {
            tolerations.push(toleration_json(want));
            changed = true;
        }
    }
    Ok(changed)
}

fn string_array(words: Vec<String>) -> Value {
    Value::Array(words.into_iter().map(Value::String).collect())
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

    /// What the container needs for `per_worker` x `nworkers`, plus the headroom (memory).
    fn total(self, per_worker: u64, nworkers: u64, headroom: u64) -> Option<u64> {
        let n = per_worker.checked_mul(nworkers)?;
        match self {
            Resource::Memory => n.checked_add(headroom),
            Resource::Cpu => n.checked_mul(1_000),
        }
    }

    /// The per-worker flag value a container size implies: what is left after the headroom
    /// split between the workers (memory, rounded down to a count Dask reads exactly; zero
    /// when nothing is left), or the whole cores per worker, at least one (cpu).
    fn derive(self, container: u64, nworkers: u64, headroom: u64) -> Option<u64> {
        match self {
            Resource::Memory => container
                .saturating_sub(headroom)
                .checked_div(nworkers)
                .map(quantity::dask_exact_bytes),
            Resource::Cpu => Some(container.checked_div(nworkers.checked_mul(1_000)?)?.max(1)),
        }
    }

    /// Flags and size agree when the flag is what the size implies (what `derive` writes,
    /// so derived flags are stable) or, for memory, when the size holds the workers and at
    /// most the headroom more (`flags x nworkers <= size <= flags x nworkers + headroom`:
    /// a user who left room for the rest of the container, or none, is not overruled); for
    /// cpu when the size is exactly the threads.
    fn agree(self, flag: u64, container: u64, nworkers: u64, headroom: u64) -> bool {
        if self.derive(container, nworkers, headroom) == Some(flag) {
            return true;
        }
        match self {
            Resource::Memory => flag
                .checked_mul(nworkers)
                .is_some_and(|workers| workers <= container && container - workers <= headroom),
            Resource::Cpu => self.total(flag, nworkers, 0) == Some(container),
        }
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

/// The pure decision for one dimension of one container. `headroom` is what the
/// container needs beyond its workers (memory; zero for cpu).
pub(crate) fn plan(
    resource: Resource,
    sizes: Sizes,
    nworkers: u64,
    on_mismatch: OnMismatch,
    requests_equal_limits: bool,
    headroom: u64,
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
            if let Some(total) = resource.total(flag, nworkers, headroom) {
                fill(&mut plan, total);
            }
        }
        (None, Some(container)) => {
            plan.flag = resource.derive(container, nworkers, headroom);
            if plan.flag.is_some() {
                fill(&mut plan, sizes.limit.unwrap_or(container));
            }
        }
        (Some(flag), Some(container)) if resource.agree(flag, container, nworkers, headroom) => {
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
                plan.flag = resource.derive(container, nworkers, headroom);
                fill(&mut plan, sizes.limit.unwrap_or(container));
            }
            OnMismatch::UseFlags => {
                if let Some(total) = resource.total(flag, nworkers, headroom) {
                    fill(&mut plan, total);
                }
            }
        },
    }
    Ok(plan)
}

/// A flag as the worker will read it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum FlagValue {
    Absent,
    /// The value after Kubernetes' and the shell's expansion, the text as written, and the
    /// container resources it reads through `resourceFieldRef`.
    Known {
        text: String,
        written: String,
        reads: Vec<ResourceField>,
    },
    /// Only known when the container starts, and why.
    Unknown {
        written: String,
        why: String,
    },
}

impl FlagValue {
    /// How a message shows it: `4GB`, or `$(MEM) (= 4GB)` for a resolved variable.
    fn quoted(&self) -> String {
        match self {
            FlagValue::Known { text, written, .. } if text != written => {
                format!("{written} (= {text})")
            }
            FlagValue::Known { text, .. } if text.is_empty() => "\"\"".to_owned(),
            FlagValue::Known { text, .. } => text.clone(),
            FlagValue::Unknown { written, .. } => written.clone(),
            FlagValue::Absent => String::new(),
        }
    }
}

fn read_flag(
    line: &WorkerCommandLine,
    flag: &str,
    env: &ContainerEnv,
    container: &str,
) -> Result<FlagValue> {
    let found = line.flag_word(flag).map_err(|source| Error::CommandLine {
        container: container.to_owned(),
        source,
    })?;
    let Some((written, shell_expands)) = found else {
        return Ok(FlagValue::Absent);
    };
    let resolved = env.resolve(&written, shell_expands);
    Ok(match resolved.expansion {
        Expansion::Known(text) => FlagValue::Known {
            text,
            written,
            reads: resolved.reads,
        },
        Expansion::Unknown(why) => FlagValue::Unknown { written, why },
    })
}

/// The error for a value that still holds a `$` the worker will see as text.
fn unexpanded(container: &str, flag: &str, value: &str) -> Option<Error> {
    if !value.contains('$') {
        return None;
    }
    let reason = if value.contains("$(") {
        "Kubernetes expands $(NAME) only when the container's env defines NAME (it has no \
         envFrom that could)"
    } else {
        "only a shell expands $NAME or ${NAME}, and this worker is not started by one: \
         write $(NAME), which Kubernetes expands from the container's env"
    };
    Some(Error::UnexpandedVariable {
        container: container.to_owned(),
        flag: flag.to_owned(),
        value: value.to_owned(),
        reason: reason.to_owned(),
    })
}

/// `--nthreads` / `--nworkers` as the worker reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Count {
    /// Absent, or Dask's own default spelled out (`--nthreads 0`): the same thing to Dask,
    /// and to the policy, which sizes it from the container's resources.
    Default,
    Exactly(u64),
    /// Decided at runtime (`--nworkers auto` or negative, a variable only known then), and why.
    Unknown(String),
}

/// Reads a count flag the way `dask worker` does (click `int` for `--nthreads`, a string
/// that is `auto` or an `int` for `--nworkers`).
fn read_count(
    line: &WorkerCommandLine,
    flag: &str,
    env: &ContainerEnv,
    container: &str,
) -> Result<Count> {
    let value = read_flag(line, flag, env, container)?;
    let quoted = value.quoted();
    let text = match value {
        FlagValue::Absent => return Ok(Count::Default),
        FlagValue::Unknown { written, why } => {
            return Ok(Count::Unknown(format!(
                "{flag} {written} is only known when the container starts ({why})"
            )));
        }
        FlagValue::Known { text, .. } => text,
    };
    let invalid = || {
        unexpanded(container, flag, &text).unwrap_or_else(|| Error::InvalidCount {
            container: container.to_owned(),
            flag: flag.to_owned(),
            value: text.clone(),
        })
    };
    let is_nthreads = flag == command::NTHREADS;
    if !is_nthreads && text == "auto" {
        return Ok(Count::Unknown(format!("{flag} auto is decided at runtime")));
    }
    let number = quantity::python_int(&text).ok_or_else(invalid)?;
    match number {
        n if n > 0 => u64::try_from(n).map(Count::Exactly).map_err(|_| invalid()),
        0 if is_nthreads => Ok(Count::Default),
        n if n < 0 && !is_nthreads => Ok(Count::Unknown(format!(
            "{flag} {quoted} counts from the machine's cores, decided at runtime"
        ))),
        _ => Err(invalid()),
    }
}

/// `--memory-limit` as the worker reads it, for planning.
#[derive(Debug, Clone, PartialEq, Eq)]
enum MemoryFlag {
    /// Absent or `auto` (Dask's default spelled out): sized from the container's resources.
    Default,
    Bytes(u64),
    /// No byte count (a fraction, `0`, a value known only at runtime): left alone, and why.
    Unsized(String),
}

fn read_memory_flag(
    line: &WorkerCommandLine,
    env: &ContainerEnv,
    container: &str,
) -> Result<MemoryFlag> {
    let flag = command::MEMORY_LIMIT;
    let value = read_flag(line, flag, env, container)?;
    let quoted = value.quoted();
    let text = match value {
        FlagValue::Absent => return Ok(MemoryFlag::Default),
        FlagValue::Unknown { written, why } => {
            return Ok(MemoryFlag::Unsized(format!(
                "{flag} {written} is only known when the container starts ({why})"
            )));
        }
        FlagValue::Known { text, .. } => text,
    };
    match MemoryLimit::parse(&text) {
        Ok(MemoryLimit::Auto) => Ok(MemoryFlag::Default),
        Ok(MemoryLimit::Bytes(bytes)) if bytes < MIN_WORKER_MEMORY_BYTES => {
            let hint = if quantity::python_float(&text).is_some() {
                format!(": give it a unit, such as {text}GB or {text}MiB")
            } else {
                String::new()
            };
            let count = if bytes == 1 {
                "1 byte".to_owned()
            } else {
                format!("{bytes} bytes")
            };
            Err(Error::TooSmall {
                container: container.to_owned(),
                message: format!(
                    "{flag} {quoted} is {count} to Dask ({}), and a Dask worker needs at least \
                     {} ({MIN_WORKER_MEMORY_BYTES} bytes){hint}",
                    quantity::describe_dask_unit(&text),
                    format_k8s_memory(MIN_WORKER_MEMORY_BYTES),
                ),
            })
        }
        Ok(MemoryLimit::Bytes(bytes)) => Ok(MemoryFlag::Bytes(bytes)),
        Ok(MemoryLimit::Fraction(_)) => Ok(MemoryFlag::Unsized(format!(
            "{flag} {quoted} is a fraction of the machine's memory, not a byte count"
        ))),
        Ok(MemoryLimit::Disabled) => Ok(MemoryFlag::Unsized(format!(
            "{flag} {quoted} disables memory management, not a byte count"
        ))),
        Err(source) => {
            Err(
                unexpanded(container, flag, &text).unwrap_or_else(|| Error::InvalidFlag {
                    container: container.to_owned(),
                    flag: flag.to_owned(),
                    source,
                }),
            )
        }
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
    let mut command_words = read_string_array(map, "command", path)?.unwrap_or_default();
    let mut arg_words = read_string_array(map, "args", path)?.unwrap_or_default();
    let Some(mut line) = WorkerCommandLine::find(&command_words, &arg_words) else {
        return Ok(None);
    };
    let mut warnings = Vec::new();
    let cmdline_error = |source| Error::CommandLine {
        container: name.clone(),
        source,
    };

    // Command-line forms current Dask no longer has: the pod would fail to start.
    if line.invocation() == Invocation::HyphenatedScript {
        warnings.push(format!(
            "container {name:?}: the dask-worker script was removed in distributed 2026.6.0, so \
             the container fails to start with a current image; use `dask worker`"
        ));
    }
    let nworkers_flag = if line.has_flag(command::NPROCS) {
        if line.has_flag(command::NWORKERS) {
            return Err(Error::RemovedFlag {
                container: name,
                message: "--nprocs and --nworkers are both given: Dask refused that even when \
                          --nprocs existed (\"Both --nprocs and --nworkers were specified. Use \
                          --nworkers only.\"); keep --nworkers"
                    .to_owned(),
            });
        }
        warnings.push(format!(
            "container {name:?}: --nprocs was removed from distributed (2026.8.0 exits with \
             \"No such option '--nprocs'\"); it is read as --nworkers for older images, use \
             --nworkers"
        ));
        command::NPROCS
    } else {
        command::NWORKERS
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
    let resources = ContainerResources {
        memory: Sizes {
            flag: None,
            limit: quantity("limits", Resource::Memory, map)?,
            request: quantity("requests", Resource::Memory, map)?,
        },
        cpu: Sizes {
            flag: None,
            limit: quantity("limits", Resource::Cpu, map)?,
            request: quantity("requests", Resource::Cpu, map)?,
        },
    };
    let env = ContainerEnv::new(map, &name, resources);

    let nworkers = read_count(&line, nworkers_flag, &env, &name)?;
    let nthreads = read_count(&line, command::NTHREADS, &env, &name)?;
    let memory_flag = read_memory_flag(&line, &env, &name)?;

    let mut plans: Vec<(Resource, Plan)> = Vec::new();
    let mut problems = Vec::new();
    match &nworkers {
        Count::Unknown(why) => warnings.push(format!(
            "container {name:?}: {why}; resources and --nthreads/--memory-limit left as they are"
        )),
        Count::Default | Count::Exactly(_) => {
            let n = match nworkers {
                Count::Exactly(n) => n,
                _ => 1,
            };
            let memory_sizes = match &memory_flag {
                MemoryFlag::Bytes(b) => Some(Sizes {
                    flag: Some(*b),
                    ..resources.memory
                }),
                MemoryFlag::Default => Some(resources.memory),
                MemoryFlag::Unsized(why) => {
                    warnings.push(format!(
                        "container {name:?}: {why}; memory resources left as they are"
                    ));
                    None
                }
            };
            let cpu_sizes = match &nthreads {
                Count::Exactly(t) => Some(Sizes {
                    flag: Some(*t),
                    ..resources.cpu
                }),
                Count::Default => Some(resources.cpu),
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
                if sizes.flag.is_none() && sizes.limit.is_none() && sizes.request.is_none() {
                    warnings.push(unsized_warning(&name, resource));
                    continue;
                }
                let headroom = match resource {
                    Resource::Memory => settings.memory_headroom.bytes(),
                    Resource::Cpu => 0,
                };
                match plan(
                    resource,
                    sizes,
                    n,
                    settings.on_mismatch,
                    settings.requests_equal_limits,
                    headroom,
                ) {
                    Ok(p) => {
                        if resource == Resource::Memory
                            && let Some(per_worker) = p.flag
                            && per_worker < MIN_WORKER_MEMORY_BYTES
                        {
                            problems
                                .push(too_small_for_workers(&name, sizes, n, headroom, per_worker));
                            continue;
                        }
                        plans.push((resource, p));
                    }
                    Err(d) => {
                        let flag = match resource {
                            Resource::Memory => command::MEMORY_LIMIT,
                            Resource::Cpu => command::NTHREADS,
                        };
                        let shown = read_flag(&line, flag, &env, &name)?.quoted();
                        problems.push(mismatch_error(&name, resource, d, n, headroom, &shown));
                    }
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

    // A flag that reads the container's own resources (`resourceFieldRef`) must read the
    // same once the planned resources are written (a reinvocation sees them), or flags and
    // resources would never settle: refuse rather than chase it.
    let planned = planned_resources(resources, &plans);
    if planned != resources {
        let planned_env = ContainerEnv::new(map, &name, planned);
        for (flag, dimension) in [
            (command::MEMORY_LIMIT, Some(Resource::Memory)),
            (command::NTHREADS, Some(Resource::Cpu)),
            (nworkers_flag, None),
        ] {
            let rewritten = plans
                .iter()
                .any(|(r, p)| Some(*r) == dimension && p.flag.is_some());
            if rewritten {
                continue;
            }
            let before = read_flag(&line, flag, &env, &name)?;
            let after = read_flag(&line, flag, &planned_env, &name)?;
            if after != before {
                let mut reads: Vec<&str> = [&before, &after]
                    .iter()
                    .flat_map(|v| match v {
                        FlagValue::Known { reads, .. } => reads.iter().map(|r| r.path()).collect(),
                        _ => Vec::new(),
                    })
                    .collect();
                reads.dedup();
                return Err(Error::Mismatch {
                    container: name,
                    message: format!(
                        "{flag} {} reads {}, which the policy must change for the flags to \
                         fit, and the flag would change with it (to {}); write the flag as a \
                         value, or make the resources agree with it",
                        before.quoted(),
                        reads.join(", "),
                        after.quoted(),
                    ),
                });
            }
        }
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
    let (mut command_edited, mut args_edited) = (false, false);
    let mut edits = flag_edits.iter().peekable();
    while let Some((flag, value)) = edits.next() {
        match line
            .edit_flag(&mut command_words, &mut arg_words, flag, value)
            .map_err(cmdline_error)?
        {
            None => continue,
            Some(ArgvField::Command) => command_edited = true,
            Some(ArgvField::Args) => args_edited = true,
        }
        // An edit moves the words after it: find them again for the next edit.
        if edits.peek().is_some() {
            line = WorkerCommandLine::find(&command_words, &arg_words).ok_or_else(|| {
                Error::malformed(path, "the worker command line was lost while editing")
            })?;
        }
    }
    let mut changed = command_edited || args_edited;
    if command_edited {
        map.insert("command".into(), string_array(command_words));
    }
    if args_edited {
        map.insert("args".into(), string_array(arg_words));
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

/// The container's resources once the plans are written.
fn planned_resources(
    mut resources: ContainerResources,
    plans: &[(Resource, Plan)],
) -> ContainerResources {
    for (resource, p) in plans {
        let sizes = match resource {
            Resource::Memory => &mut resources.memory,
            Resource::Cpu => &mut resources.cpu,
        };
        sizes.limit = p.limit.or(sizes.limit);
        sizes.request = p.request.or(sizes.request);
    }
    resources
}

/// The same warning for an absent flag and for Dask's default spelled out, when the
/// container has no resources to size it from either.
fn unsized_warning(container: &str, resource: Resource) -> String {
    match resource {
        Resource::Memory => format!(
            "container {container:?}: neither --memory-limit (absent or auto) nor \
             resources.limits/requests.memory gives a size: memory left as it is, and Dask \
             sizes the worker from the node's memory when it starts"
        ),
        Resource::Cpu => format!(
            "container {container:?}: neither --nthreads (absent or 0) nor \
             resources.limits/requests.cpu gives a size: cpu left as it is, and Dask sizes \
             the worker from the node's cores when it starts"
        ),
    }
}

fn too_small_for_workers(
    container: &str,
    sizes: Sizes,
    nworkers: u64,
    headroom: u64,
    per_worker: u64,
) -> Error {
    let (source, size) = match (sizes.limit, sizes.request) {
        (Some(limit), _) => ("limits", limit),
        (None, Some(request)) => ("requests", request),
        (None, None) => ("limits", 0),
    };
    Error::TooSmall {
        container: container.to_owned(),
        message: format!(
            "resources.{source}.memory {} ({size} bytes) leaves {per_worker} bytes per worker \
             (--nworkers {nworkers}, after memoryHeadroom {}), and a Dask worker needs at least \
             {} ({MIN_WORKER_MEMORY_BYTES} bytes)",
            format_k8s_memory(size),
            format_k8s_memory(headroom),
            format_k8s_memory(MIN_WORKER_MEMORY_BYTES),
        ),
    }
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

/// `shown` is the flag as the user wrote it (`4GB`, or `$(MEM) (= 4GB)`).
fn mismatch_error(
    container: &str,
    resource: Resource,
    d: Disagreement,
    nworkers: u64,
    headroom: u64,
    shown: &str,
) -> Error {
    let source = if d.from_request { "requests" } else { "limits" };
    let message = match resource {
        Resource::Memory => {
            let workers = d.flag.saturating_mul(nworkers);
            let wanted = workers.saturating_add(headroom);
            let derived = Resource::Memory
                .derive(d.container, nworkers, headroom)
                .filter(|b| *b >= MIN_WORKER_MEMORY_BYTES)
                .map_or_else(|| "a larger size".to_owned(), format_dask_bytes);
            let rule = if headroom == 0 {
                "it must equal that".to_owned()
            } else {
                format!(
                    "it must hold that and at most memoryHeadroom {} more",
                    format_k8s_memory(headroom)
                )
            };
            format!(
                "--memory-limit {shown} x --nworkers {nworkers} = {} ({workers} bytes), but \
                 resources.{source}.memory is {} ({} bytes): {rule}; make them agree \
                 (--memory-limit {derived} or resources.{source}.memory {}), or set the \
                 policy's onMismatch to useResources or useFlags",
                format_k8s_memory(workers),
                format_k8s_memory(d.container),
                d.container,
                format_k8s_memory(wanted),
            )
        }
        Resource::Cpu => {
            let flag_total = d.flag.saturating_mul(nworkers);
            let derived = Resource::Cpu.derive(d.container, nworkers, 0).unwrap_or(1);
            format!(
                "--nthreads {shown} x --nworkers {nworkers} = {flag_total} CPU, but resources.{source}.cpu \
                 is {}; make them agree (--nthreads {derived} or resources.{source}.cpu {flag_total}), \
                 or set the policy's onMismatch to useResources or useFlags",
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
    #[case::too_small_to_split_gives_zero_for_the_floor_check(
        Resource::Memory,
        sizes(None, Some(1), None),
        2,
        p(Some(0), None, Some(1))
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
            plan(resource, sizes, nworkers, OnMismatch::Reject, true, 0),
            Ok(expected)
        );
    }

    const HEADROOM: u64 = 256 << 20;

    #[rstest]
    #[case::limit_from_flags_holds_the_headroom(sizes(Some(6 * GB), None, None), 1, Ok(p(None, Some(6 * GB + HEADROOM), Some(6 * GB + HEADROOM))))]
    #[case::headroom_once_per_container(sizes(Some(3 * GB), None, None), 2, Ok(p(None, Some(6 * GB + HEADROOM), Some(6 * GB + HEADROOM))))]
    #[case::flag_from_limit_leaves_the_headroom(sizes(None, Some(6 * GB), Some(6 * GB)), 1, Ok(p(Some(6 * GB - HEADROOM), None, None)))]
    #[case::flag_from_limit_split_after_headroom(sizes(None, Some(4 << 30), None), 2, Ok(p(Some(2_013_265_920), None, Some(4 << 30))))]
    #[case::no_room_left_derives_zero(
        sizes(None, Some(HEADROOM), None),
        1,
        Ok(p(Some(0), None, Some(HEADROOM)))
    )]
    #[case::user_without_headroom_agrees(sizes(Some(6 * GB), Some(6 * GB), Some(6 * GB)), 1, Ok(p(None, None, None)))]
    #[case::user_with_part_of_the_headroom_agrees(sizes(Some(6 * GB), Some(6 * GB + 100_000_000), Some(6 * GB + 100_000_000)), 1, Ok(p(None, None, None)))]
    #[case::user_with_exactly_the_headroom_agrees(sizes(Some(3 * GB), Some(6 * GB + HEADROOM), None), 2, Ok(p(None, None, Some(6 * GB + HEADROOM))))]
    #[case::more_than_the_headroom_spare_disagrees(sizes(Some(5 * GB), Some(6 * GB), None), 1, Err(Disagreement { flag: 5 * GB, container: 6 * GB, from_request: false }))]
    #[case::flags_above_the_limit_disagree(sizes(Some(6 * GB), Some(5 * GB), None), 1, Err(Disagreement { flag: 6 * GB, container: 5 * GB, from_request: false }))]
    fn memory_headroom(
        #[case] before: Sizes,
        #[case] nworkers: u64,
        #[case] expected: std::result::Result<Plan, Disagreement>,
    ) {
        assert_eq!(
            plan(
                Resource::Memory,
                before,
                nworkers,
                OnMismatch::Reject,
                true,
                HEADROOM
            ),
            expected
        );
    }

    #[test]
    fn cpu_has_no_headroom() {
        assert_eq!(
            plan(
                Resource::Cpu,
                sizes(Some(2), None, None),
                1,
                OnMismatch::Reject,
                true,
                0
            ),
            Ok(p(None, Some(2_000), Some(2_000)))
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
            0,
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
            plan(Resource::Cpu, before, 1, OnMismatch::UseFlags, true, 0),
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
            0,
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
            headroom in proptest::sample::select(vec![0u64, 1, 1_000, 7_777]),
        ) {
            let resource = if cpu { Resource::Cpu } else { Resource::Memory };
            let headroom = if cpu { 0 } else { headroom };
            let before = sizes(flag, limit, request);
            if let Ok(first) = plan(resource, before, nworkers, mode, guaranteed, headroom) {
                let after = Sizes {
                    flag: first.flag.or(before.flag),
                    limit: first.limit.or(before.limit),
                    request: first.request.or(before.request),
                };
                let second = plan(resource, after, nworkers, mode, guaranteed, headroom);
                proptest::prop_assert_eq!(second, Ok(Plan::default()));
            }
        }
    }
}
