//! Flag values that are variables, resolved the way the container will see them.
//!
//! Two expansions happen before Dask reads a flag. Kubernetes replaces `$(NAME)` in
//! `command` and `args` (inside `sh -c` scripts too) with the container's env var `NAME`,
//! leaves `$(NAME)` as written when there is no such variable, and reads `$$` as `$`.
//! Then, in a `sh -c` script, the shell expands `$NAME` and `${NAME}` from the process
//! environment. The policy sees the container's `env`, so it resolves a variable whose value
//! is written there (`value`, itself expanded like Kubernetes does) or comes from the
//! container's own resources (`valueFrom.resourceFieldRef`, computed as the kubelet does);
//! anything else (ConfigMaps, Secrets, `envFrom`, the image's `ENV`, command substitution)
//! is only known at runtime, and the caller leaves that dimension alone with a warning.

use crate::defaults::Sizes;
use crate::quantity::{parse_k8s_cpu_millis, parse_k8s_memory};
use serde_json::{Map, Value};

/// Longest expansion the policy follows. Kubernetes expands env values that refer to
/// earlier ones, so a chain of `A=$(B)$(B)` doubles at every step: a bound keeps the
/// policy's work linear in the size of the object.
const MAX_EXPANDED_LEN: usize = 4_096;

/// A container resource a `resourceFieldRef` can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ResourceField {
    LimitsCpu,
    LimitsMemory,
    RequestsCpu,
    RequestsMemory,
}

impl ResourceField {
    fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "limits.cpu" => ResourceField::LimitsCpu,
            "limits.memory" => ResourceField::LimitsMemory,
            "requests.cpu" => ResourceField::RequestsCpu,
            "requests.memory" => ResourceField::RequestsMemory,
            _ => return None,
        })
    }

    pub(crate) fn path(self) -> &'static str {
        match self {
            ResourceField::LimitsCpu => "resources.limits.cpu",
            ResourceField::LimitsMemory => "resources.limits.memory",
            ResourceField::RequestsCpu => "resources.requests.cpu",
            ResourceField::RequestsMemory => "resources.requests.memory",
        }
    }
}

/// The container's memory (bytes) and cpu (millicores) as `resourceFieldRef` reads them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct ContainerResources {
    pub memory: Sizes,
    pub cpu: Sizes,
}

impl ContainerResources {
    fn get(self, field: ResourceField) -> Option<u64> {
        match field {
            ResourceField::LimitsCpu => self.cpu.limit,
            ResourceField::LimitsMemory => self.memory.limit,
            ResourceField::RequestsCpu => self.cpu.request,
            ResourceField::RequestsMemory => self.memory.request,
        }
    }
}

/// What a piece of text turns into when the container starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Expansion {
    /// The text the worker will see.
    Known(String),
    /// Only known at runtime, and why.
    Unknown(String),
}

/// A resolved value and the container resources it was computed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Resolved {
    pub expansion: Expansion,
    /// Resource fields of this container the value reads (through `resourceFieldRef`).
    pub reads: Vec<ResourceField>,
}

impl Resolved {
    fn known(text: String) -> Self {
        Resolved {
            expansion: Expansion::Known(text),
            reads: Vec::new(),
        }
    }

    fn unknown(why: String) -> Self {
        Resolved {
            expansion: Expansion::Unknown(why),
            reads: Vec::new(),
        }
    }
}

/// One `env` entry as the kubelet resolves it.
#[derive(Debug, Clone)]
struct EnvVar {
    name: String,
    value: Resolved,
}

/// The container's environment as far as the pod spec says.
#[derive(Debug, Clone)]
pub(crate) struct ContainerEnv {
    vars: Vec<EnvVar>,
    /// `envFrom` may define any other name.
    env_from: bool,
}

impl ContainerEnv {
    /// Reads `env` and `envFrom` of a container; `resources` are the container's own,
    /// which `resourceFieldRef` entries without `containerName` (or naming this container)
    /// read.
    pub(crate) fn new(
        container: &Map<String, Value>,
        container_name: &str,
        resources: ContainerResources,
    ) -> Self {
        let env_from = container
            .get("envFrom")
            .and_then(Value::as_array)
            .is_some_and(|sources| !sources.is_empty());
        let mut env = ContainerEnv {
            vars: Vec::new(),
            env_from,
        };
        let Some(entries) = container.get("env").and_then(Value::as_array) else {
            return env;
        };
        for entry in entries {
            let Some(name) = entry.get("name").and_then(Value::as_str) else {
                continue;
            };
            // Each value sees the entries before it, as the kubelet expands them in order.
            let value = env.entry_value(entry, name, container_name, resources);
            env.vars.push(EnvVar {
                name: name.to_owned(),
                value,
            });
        }
        env
    }

    fn entry_value(
        &self,
        entry: &Value,
        name: &str,
        container_name: &str,
        resources: ContainerResources,
    ) -> Resolved {
        let Some(source) = entry.get("valueFrom").filter(|v| !v.is_null()) else {
            let value = entry.get("value").and_then(Value::as_str).unwrap_or("");
            return self.expand_kubernetes(value);
        };
        let runtime = |what: &str| Resolved::unknown(format!("env {name} comes from {what}"));
        if source.get("configMapKeyRef").is_some() {
            return runtime("a ConfigMap");
        }
        if source.get("secretKeyRef").is_some() {
            return runtime("a Secret");
        }
        if source.get("fieldRef").is_some() {
            return runtime("a field of the pod");
        }
        let Some(field_ref) = source.get("resourceFieldRef") else {
            return runtime("a source the policy does not know");
        };
        let other_container = field_ref
            .get("containerName")
            .and_then(Value::as_str)
            .filter(|c| !c.is_empty() && *c != container_name);
        if let Some(other) = other_container {
            return runtime(&format!("the resources of container {other:?}"));
        }
        let resource = field_ref
            .get("resource")
            .and_then(Value::as_str)
            .unwrap_or("");
        let Some(field) = ResourceField::parse(resource) else {
            return runtime(&format!("resources field {resource:?}"));
        };
        let divisor = match field_ref.get("divisor") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            Some(_) => return runtime("a resourceFieldRef with an unreadable divisor"),
        };
        let Some(amount) = resources.get(field) else {
            return Resolved::unknown(format!(
                "env {name} is {}, which is not set (the kubelet then gives the node's \
                 allocatable amount)",
                field.path()
            ));
        };
        match resource_field_value(field, amount, divisor.as_deref()) {
            Some(text) => Resolved {
                expansion: Expansion::Known(text),
                reads: vec![field],
            },
            None => runtime("a resourceFieldRef with an unusable divisor"),
        }
    }

    /// The value of `$(name)` as Kubernetes substitutes it; `None` when the name is not
    /// defined at all (Kubernetes then leaves `$(name)` as written).
    fn lookup_kubernetes(&self, name: &str) -> Option<Resolved> {
        match self.vars.iter().rev().find(|v| v.name == name) {
            Some(var) => Some(var.value.clone()),
            None if self.env_from => Some(Resolved::unknown(format!(
                "{name} is not in the container's env and may come from envFrom"
            ))),
            None => None,
        }
    }

    /// Kubernetes' `$(NAME)` expansion (`k8s.io/kubernetes/third_party/forked/golang/expansion`):
    /// `$$` is `$`, `$(NAME)` is the variable or stays as written, any other `$` is kept.
    pub(crate) fn expand_kubernetes(&self, text: &str) -> Resolved {
        let mut out = String::with_capacity(text.len());
        let mut reads = Vec::new();
        let mut rest = text;
        while let Some(at) = rest.find('$') {
            out.push_str(rest.get(..at).unwrap_or_default());
            let after = rest.get(at + 1..).unwrap_or_default();
            if after.is_empty() {
                out.push('$');
                rest = after;
                break;
            }
            if let Some(tail) = after.strip_prefix('$') {
                out.push('$');
                rest = tail;
            } else if let Some(inner) = after.strip_prefix('(') {
                match inner.find(')') {
                    Some(close) => {
                        let name = inner.get(..close).unwrap_or_default();
                        match self.lookup_kubernetes(name) {
                            Some(Resolved {
                                expansion: Expansion::Known(value),
                                reads: value_reads,
                            }) => {
                                out.push_str(&value);
                                reads.extend(value_reads);
                            }
                            Some(unknown) => return unknown,
                            None => {
                                out.push_str("$(");
                                out.push_str(name);
                                out.push(')');
                            }
                        }
                        rest = inner.get(close + 1..).unwrap_or_default();
                    }
                    None => {
                        out.push_str("$(");
                        rest = inner;
                    }
                }
            } else {
                out.push('$');
                rest = after;
            }
            if out.len() > MAX_EXPANDED_LEN {
                return Resolved::unknown(format!(
                    "the value expands to more than {MAX_EXPANDED_LEN} characters"
                ));
            }
        }
        out.push_str(rest);
        Resolved {
            expansion: Expansion::Known(out),
            reads,
        }
    }

    /// A shell's expansion of `$NAME` and `${NAME}` from the process environment (the
    /// container's env, which overrides the image's); anything else the shell would
    /// substitute is only known at runtime.
    fn expand_shell(&self, text: &str) -> Resolved {
        let mut out = String::with_capacity(text.len());
        let mut reads = Vec::new();
        let mut chars = text.char_indices().peekable();
        while let Some((at, c)) = chars.next() {
            if c == '`' {
                return Resolved::unknown(format!(
                    "{text:?} runs a command substitution in the shell"
                ));
            }
            if c != '$' {
                out.push(c);
                continue;
            }
            let rest = text.get(at + 1..).unwrap_or_default();
            let (name, consumed) = if let Some(braced) = rest.strip_prefix('{') {
                match braced.find('}') {
                    Some(close) if is_shell_name(braced.get(..close).unwrap_or_default()) => {
                        (braced.get(..close).unwrap_or_default(), close + 2)
                    }
                    _ => {
                        return Resolved::unknown(format!(
                            "{text:?} uses a shell parameter expansion"
                        ));
                    }
                }
            } else {
                let len = rest
                    .char_indices()
                    .find(|(i, c)| {
                        !(c.is_ascii_alphanumeric() || *c == '_') || (*i == 0 && c.is_ascii_digit())
                    })
                    .map_or(rest.len(), |(i, _)| i);
                if len == 0 {
                    match rest.chars().next() {
                        // A `$` before a space, a quote or the end is a plain `$`.
                        None | Some(' ' | '\t' | '"' | '\'') => {
                            out.push('$');
                            continue;
                        }
                        Some('(') => {
                            return Resolved::unknown(format!(
                                "{text:?} runs a command substitution in the shell"
                            ));
                        }
                        Some(_) => {
                            return Resolved::unknown(format!(
                                "{text:?} uses a shell special parameter"
                            ));
                        }
                    }
                }
                (rest.get(..len).unwrap_or_default(), len)
            };
            match self.vars.iter().rev().find(|v| v.name == name) {
                Some(EnvVar {
                    value:
                        Resolved {
                            expansion: Expansion::Known(value),
                            reads: value_reads,
                        },
                    ..
                }) => {
                    out.push_str(value);
                    reads.extend(value_reads.iter().copied());
                }
                Some(EnvVar { value, .. }) => return value.clone(),
                None => {
                    return Resolved::unknown(format!(
                        "${name} is not in the container's env (it may come from the image or envFrom)"
                    ));
                }
            }
            // Skip what the name took (we are positioned after the `$`).
            let mut skipped = 0;
            while skipped < consumed {
                match chars.next() {
                    Some((_, c)) => skipped += c.len_utf8(),
                    None => break,
                }
            }
            if out.len() > MAX_EXPANDED_LEN {
                return Resolved::unknown(format!(
                    "the value expands to more than {MAX_EXPANDED_LEN} characters"
                ));
            }
        }
        Resolved {
            expansion: Expansion::Known(out),
            reads,
        }
    }

    /// What a word of the worker's command line will be when Dask reads it.
    /// `shell_expands`: the word is in a `sh -c` script and has a `$` or backtick the
    /// shell expands (not in single quotes).
    pub(crate) fn resolve(&self, word: &str, shell_expands: bool) -> Resolved {
        let expandable = word.contains('$') || (shell_expands && word.contains('`'));
        if !expandable {
            return Resolved::known(word.to_owned());
        }
        let after_kubernetes = self.expand_kubernetes(word);
        if !shell_expands {
            return after_kubernetes;
        }
        match after_kubernetes.expansion {
            Expansion::Known(text) => {
                let mut resolved = self.expand_shell(&text);
                resolved.reads.extend(after_kubernetes.reads);
                resolved
            }
            Expansion::Unknown(_) => after_kubernetes,
        }
    }
}

fn is_shell_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The kubelet's `resourceFieldRef` value: `ceil(amount / divisor)` in float arithmetic
/// (`convertResourceMemoryToString` / `convertResourceCPUToString`), as a decimal integer.
/// CPU is counted in millicores on both sides; a missing divisor is `1`.
fn resource_field_value(
    field: ResourceField,
    amount: u64,
    divisor: Option<&str>,
) -> Option<String> {
    let divisor = match (field, divisor.filter(|d| !d.is_empty())) {
        (_, None) => match field {
            ResourceField::LimitsCpu | ResourceField::RequestsCpu => 1_000,
            ResourceField::LimitsMemory | ResourceField::RequestsMemory => 1,
        },
        (ResourceField::LimitsCpu | ResourceField::RequestsCpu, Some(d)) => {
            parse_k8s_cpu_millis(d).ok()?
        }
        (ResourceField::LimitsMemory | ResourceField::RequestsMemory, Some(d)) => {
            parse_k8s_memory(d).ok()?
        }
    };
    if divisor == 0 {
        return None;
    }
    #[allow(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss
    )] // the kubelet's own float64 arithmetic, then int64
    let value = (amount as f64 / divisor as f64).ceil() as i64;
    Some(value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;
    use serde_json::json;

    fn resources() -> ContainerResources {
        ContainerResources {
            memory: Sizes {
                flag: None,
                limit: Some(6_000_000_000),
                request: Some(4_000_000_000),
            },
            cpu: Sizes {
                flag: None,
                limit: Some(1_500),
                request: None,
            },
        }
    }

    fn env(container: Value) -> ContainerEnv {
        let map = container.as_object().cloned().unwrap_or_default();
        ContainerEnv::new(&map, "worker", resources())
    }

    fn known(text: &str) -> Expansion {
        Expansion::Known(text.to_owned())
    }

    #[rstest]
    #[case::literal("6GB", false, known("6GB"))]
    #[case::kubernetes_var("$(MEM)", false, known("5GB"))]
    #[case::kubernetes_var_in_word("$(MEM_NUMBER)GB", false, known("5GB"))]
    #[case::escaped_dollar("$$(MEM)", false, known("$(MEM)"))]
    #[case::undefined_left_as_written("$(NOPE)", false, known("$(NOPE)"))]
    #[case::unclosed("$(MEM", false, known("$(MEM"))]
    #[case::env_value_refers_to_earlier("$(MEM_FROM_NUMBER)", false, known("5GB"))]
    #[case::env_value_refers_to_later("$(EARLY)", false, known("$(MEM)"))]
    #[case::shell_var("$MEM", true, known("5GB"))]
    #[case::shell_braced("${MEM}", true, known("5GB"))]
    #[case::shell_var_in_exec_form_is_text("$MEM", false, known("$MEM"))]
    #[case::resource_field_limit("$(LIMIT)", false, known("6000000000"))]
    #[case::resource_field_divisor_rounds_up("$(LIMIT_MI)", false, known("5723"))]
    #[case::resource_field_cpu_rounds_up("$(CPUS)", false, known("2"))]
    #[case::resource_field_cpu_millis("$(CPU_MILLIS)", false, known("1500"))]
    fn resolves(#[case] word: &str, #[case] shell: bool, #[case] expected: Expansion) {
        let env = env(json!({"env": [
            {"name": "EARLY", "value": "$(MEM)"},
            {"name": "MEM", "value": "5GB"},
            {"name": "MEM_NUMBER", "value": "5"},
            {"name": "MEM_FROM_NUMBER", "value": "$(MEM_NUMBER)GB"},
            {"name": "LIMIT", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory"}}},
            {"name": "LIMIT_MI", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
            {"name": "CPUS", "valueFrom": {"resourceFieldRef": {"containerName": "worker", "resource": "limits.cpu"}}},
            {"name": "CPU_MILLIS", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu", "divisor": "1m"}}},
        ]}));
        assert_eq!(env.resolve(word, shell).expansion, expected);
    }

    #[rstest]
    #[case::config_map("$(FROM_CM)", false, "env FROM_CM comes from a ConfigMap")]
    #[case::secret("$(FROM_SECRET)", false, "env FROM_SECRET comes from a Secret")]
    #[case::other_container(
        "$(OTHER)",
        false,
        "env OTHER comes from the resources of container \"sidecar\""
    )]
    #[case::unset_request(
        "$(CPU_REQUEST)",
        false,
        "env CPU_REQUEST is resources.requests.cpu, which is not set"
    )]
    #[case::command_substitution("$(nproc)", true, "command substitution")]
    #[case::backticks("`nproc`", true, "command substitution")]
    #[case::image_env("$FROM_IMAGE", true, "$FROM_IMAGE is not in the container's env")]
    #[case::default_value("${MEM:-4GB}", true, "parameter expansion")]
    fn leaves_runtime_values_unknown(#[case] word: &str, #[case] shell: bool, #[case] why: &str) {
        let env = env(json!({"env": [
            {"name": "FROM_CM", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k"}}},
            {"name": "FROM_SECRET", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
            {"name": "OTHER", "valueFrom": {"resourceFieldRef": {"containerName": "sidecar", "resource": "limits.memory"}}},
            {"name": "CPU_REQUEST", "valueFrom": {"resourceFieldRef": {"resource": "requests.cpu"}}},
        ]}));
        match env.resolve(word, shell).expansion {
            Expansion::Unknown(reason) => assert!(reason.contains(why), "{reason}"),
            Expansion::Known(text) => panic!("{word} resolved to {text}"),
        }
    }

    #[test]
    fn env_from_makes_undefined_names_unknown() {
        let env = env(json!({"envFrom": [{"configMapRef": {"name": "c"}}]}));
        assert!(matches!(
            env.resolve("$(MEM)", false).expansion,
            Expansion::Unknown(_)
        ));
    }

    #[test]
    fn resource_reads_are_recorded_through_chains() {
        let env = env(json!({"env": [
            {"name": "LIMIT", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory"}}},
            {"name": "MEM", "value": "$(LIMIT)"},
        ]}));
        assert_eq!(
            env.resolve("$MEM", true).reads,
            vec![ResourceField::LimitsMemory]
        );
    }

    #[test]
    fn doubling_chains_stay_bounded() {
        let mut entries = vec![json!({"name": "V0", "value": "xxxxxxxx"})];
        for i in 1..64 {
            entries.push(
                json!({"name": format!("V{i}"), "value": format!("$(V{})$(V{})", i - 1, i - 1)}),
            );
        }
        let env = env(json!({ "env": entries }));
        assert!(matches!(
            env.resolve("$(V63)", false).expansion,
            Expansion::Unknown(_)
        ));
    }
}
