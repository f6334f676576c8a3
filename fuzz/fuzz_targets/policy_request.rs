//! Pod-shaped admission requests into the policy: kinds, operations and labels it handles
//! and some it does not; containers whose command lines are made from a dictionary of
//! worker invocations, flags (both spellings, removed ones too), Dask and Kubernetes units,
//! variables and `sh -c` scripts; env entries those variables read (values,
//! `resourceFieldRef`s, ConfigMaps, `envFrom`); resources; and settings.
//!
//! Beyond "never panics", each answer is checked the way the apiserver uses it:
//! - a rejection says why;
//! - a mutated object, evaluated again (a webhook may be reinvoked), is accepted unchanged;
//! - fields the policy does not own survive (a marker in the pod spec and in each
//!   container), so a patch never deletes user data.

#![no_main]

use arbitrary::Arbitrary;
use dask_worker_defaults::evaluate;
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value, json};

#[derive(Arbitrary, Debug)]
enum Kind {
    Pod,
    Deployment,
    StatefulSet,
    Job,
    CronJob,
    DaskWorkerGroup,
    ConfigMap,
}

impl Kind {
    fn group_kind(&self) -> (&'static str, &'static str) {
        match self {
            Kind::Pod => ("", "Pod"),
            Kind::Deployment => ("apps", "Deployment"),
            Kind::StatefulSet => ("apps", "StatefulSet"),
            Kind::Job => ("batch", "Job"),
            Kind::CronJob => ("batch", "CronJob"),
            Kind::DaskWorkerGroup => ("kubernetes.dask.org", "DaskWorkerGroup"),
            Kind::ConfigMap => ("", "ConfigMap"),
        }
    }

    /// Wraps a pod template (metadata + spec) the way the kind carries it.
    fn wrap(&self, template: Value) -> Value {
        match self {
            Kind::Pod | Kind::ConfigMap => template,
            Kind::Deployment | Kind::StatefulSet | Kind::Job => {
                json!({"metadata": {"name": "w"}, "spec": {"template": template}})
            }
            Kind::CronJob => json!({"spec": {"jobTemplate": {"spec": {"template": template}}}}),
            Kind::DaskWorkerGroup => {
                json!({"spec": {"cluster": "c", "worker": {"replicas": 2, "spec": template["spec"].clone()}}})
            }
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Operation {
    Create,
    Update,
    Delete,
}

#[derive(Arbitrary, Debug)]
enum Labels {
    Worker,
    Classic,
    Scheduler,
    None,
    NotAnObject,
}

impl Labels {
    fn json(&self) -> Option<Value> {
        match self {
            Labels::Worker => Some(json!({"dask.org/component": "worker"})),
            Labels::Classic => Some(json!({"app": "dask", "component": "dask-worker"})),
            Labels::Scheduler => Some(json!({"dask.org/component": "scheduler"})),
            Labels::None => None,
            Labels::NotAnObject => Some(json!(["dask"])),
        }
    }
}

/// The words a Dask worker command line is made of.
const DICTIONARY: &[&str] = &[
    "dask",
    "worker",
    "dask-worker",
    "python",
    "python3",
    "-m",
    "-u",
    "distributed.cli.dask_worker",
    "tini",
    "-g",
    "--",
    "tcp://scheduler:8786",
    "$(DASK_SCHEDULER_ADDRESS)",
    "--nthreads",
    "--nworkers",
    "--nprocs",
    "--memory-limit",
    "--death-timeout",
    "--name",
    "--no-dashboard",
    "--resources",
    "GPU=2",
    "auto",
    "0",
    "1",
    "-1",
    "2",
    "4",
    "0.5",
    "1.0",
    "2.5",
    "4096",
    "6GB",
    "6G",
    "6gb",
    "6GiB",
    "6Gi",
    "8.2GB",
    "1.5GB",
    "500m",
    "500M",
    "1_000MB",
    "1e9",
    "6e9",
    "1e400",
    "inf",
    "nan",
    "64MiB",
    "$(MEM)",
    "$(N)",
    "$(THREADS)",
    "$MEM",
    "${MEM}",
    "${THREADS}",
    "$(nproc)",
    "`nproc`",
    "$$(MEM)",
    "'",
    "\"",
    "&&",
    ";",
    "|",
    "2>&1",
    "#",
    "\\\n",
    "$(",
    "${",
    "\u{212A}B",
];

#[derive(Arbitrary, Debug)]
enum Unit {
    None,
    B,
    KB,
    MB,
    GB,
    TB,
    KiB,
    MiB,
    GiB,
    K,
    M,
    G,
    Gi,
    Mi,
    Lower,
    Odd,
}

impl Unit {
    fn text(&self) -> &'static str {
        match self {
            Unit::None => "",
            Unit::B => "B",
            Unit::KB => "kB",
            Unit::MB => "MB",
            Unit::GB => "GB",
            Unit::TB => "TB",
            Unit::KiB => "KiB",
            Unit::MiB => "MiB",
            Unit::GiB => "GiB",
            Unit::K => "k",
            Unit::M => "M",
            Unit::G => "G",
            Unit::Gi => "Gi",
            Unit::Mi => "Mi",
            Unit::Lower => "gb",
            Unit::Odd => "XB",
        }
    }
}

/// A flag value or a quantity.
#[derive(Arbitrary, Debug)]
enum Amount {
    Whole(u16, Unit),
    Decimal(u16, u8, Unit),
    Exponent(u8, i8, Unit),
    Huge(u64, Unit),
    Variable(VarName),
    Word(u8),
    Text(String),
}

impl Amount {
    fn text(&self) -> String {
        match self {
            Amount::Whole(n, unit) => format!("{n}{}", unit.text()),
            Amount::Decimal(n, d, unit) => format!("{n}.{d}{}", unit.text()),
            Amount::Exponent(m, e, unit) => format!("{m}e{e}{}", unit.text()),
            Amount::Huge(n, unit) => format!("{n}{}", unit.text()),
            Amount::Variable(v) => v.reference(),
            Amount::Word(i) => dictionary(*i).to_owned(),
            Amount::Text(t) => t.chars().take(24).collect(),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum VarName {
    Mem,
    N,
    Threads,
    Undefined,
}

impl VarName {
    fn name(&self) -> &'static str {
        match self {
            VarName::Mem => "MEM",
            VarName::N => "N",
            VarName::Threads => "THREADS",
            VarName::Undefined => "NOPE",
        }
    }

    fn reference(&self) -> String {
        format!("$({})", self.name())
    }
}

#[derive(Arbitrary, Debug)]
enum Flag {
    Nthreads,
    Nworkers,
    Nprocs,
    MemoryLimit,
    DeathTimeout,
    Name,
}

impl Flag {
    fn text(&self) -> &'static str {
        match self {
            Flag::Nthreads => "--nthreads",
            Flag::Nworkers => "--nworkers",
            Flag::Nprocs => "--nprocs",
            Flag::MemoryLimit => "--memory-limit",
            Flag::DeathTimeout => "--death-timeout",
            Flag::Name => "--name",
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Word {
    Dictionary(u8),
    Flag(Flag, Amount),
    Joined(Flag, Amount),
    ShellVariable(VarName, bool),
    Text(String),
}

fn dictionary(i: u8) -> &'static str {
    DICTIONARY[usize::from(i) % DICTIONARY.len()]
}

impl Word {
    fn push_to(&self, words: &mut Vec<String>) {
        match self {
            Word::Dictionary(i) => words.push(dictionary(*i).to_owned()),
            Word::Flag(flag, amount) => {
                words.push(flag.text().to_owned());
                words.push(amount.text());
            }
            Word::Joined(flag, amount) => words.push(format!("{}={}", flag.text(), amount.text())),
            Word::ShellVariable(v, braced) => words.push(if *braced {
                format!("${{{}}}", v.name())
            } else {
                format!("${}", v.name())
            }),
            Word::Text(t) => words.push(t.chars().take(24).collect()),
        }
    }
}

/// How the container starts the worker.
#[derive(Arbitrary, Debug)]
enum Form {
    /// `args: [dask, worker, ...]`.
    Args,
    /// `args: [dask-worker, ...]`.
    Hyphenated,
    /// `command: [python, -m, distributed.cli.dask_worker], args: [...]`.
    PythonModule,
    /// `command: [sh, -c, "<prefix> dask worker ..."]`.
    ShellCommand(ShellPrefix),
    /// `command: [bash, -c], args: ["... dask worker ..."]`.
    ShellArgs(ShellPrefix),
    /// Whatever the words say.
    Free,
}

#[derive(Arbitrary, Debug)]
enum ShellPrefix {
    None,
    Exec,
    PipInstall,
    Assignment,
}

impl ShellPrefix {
    fn text(&self) -> &'static str {
        match self {
            ShellPrefix::None => "",
            ShellPrefix::Exec => "exec ",
            ShellPrefix::PipInstall => "pip install foo && exec ",
            ShellPrefix::Assignment => "MALLOC_TRIM_THRESHOLD_=0 ",
        }
    }
}

#[derive(Arbitrary, Debug)]
enum EnvSource {
    Value(Amount),
    LimitsMemory(Option<Divisor>),
    RequestsMemory(Option<Divisor>),
    LimitsCpu(Option<Divisor>),
    OtherContainer,
    ConfigMap,
    FieldRef,
}

#[derive(Arbitrary, Debug)]
enum Divisor {
    One,
    Mi,
    Milli,
    G,
    Bad,
}

impl Divisor {
    fn text(&self) -> &'static str {
        match self {
            Divisor::One => "1",
            Divisor::Mi => "1Mi",
            Divisor::Milli => "1m",
            Divisor::G => "1G",
            Divisor::Bad => "x",
        }
    }
}

#[derive(Arbitrary, Debug)]
struct EnvVar {
    name: VarName,
    source: EnvSource,
}

impl EnvVar {
    fn json(&self) -> Value {
        let field = |resource: &str, divisor: &Option<Divisor>| {
            let mut f = json!({"resource": resource});
            if let Some(d) = divisor {
                f["divisor"] = json!(d.text());
            }
            json!({"resourceFieldRef": f})
        };
        let mut entry = json!({"name": self.name.name()});
        match &self.source {
            EnvSource::Value(a) => entry["value"] = json!(a.text()),
            EnvSource::LimitsMemory(d) => entry["valueFrom"] = field("limits.memory", d),
            EnvSource::RequestsMemory(d) => entry["valueFrom"] = field("requests.memory", d),
            EnvSource::LimitsCpu(d) => entry["valueFrom"] = field("limits.cpu", d),
            EnvSource::OtherContainer => {
                entry["valueFrom"] = json!({"resourceFieldRef": {"containerName": "sidecar", "resource": "limits.memory"}})
            }
            EnvSource::ConfigMap => {
                entry["valueFrom"] = json!({"configMapKeyRef": {"name": "c", "key": "k"}})
            }
            EnvSource::FieldRef => {
                entry["valueFrom"] = json!({"fieldRef": {"fieldPath": "metadata.name"}})
            }
        }
        entry
    }
}

#[derive(Arbitrary, Debug)]
struct Resources {
    cpu: Option<Amount>,
    memory: Option<Amount>,
}

impl Resources {
    fn json(&self) -> Value {
        let mut map = Map::new();
        if let Some(cpu) = &self.cpu {
            map.insert("cpu".into(), json!(cpu.text()));
        }
        if let Some(memory) = &self.memory {
            map.insert("memory".into(), json!(memory.text()));
        }
        Value::Object(map)
    }
}

#[derive(Arbitrary, Debug)]
struct Container {
    form: Form,
    words: Vec<Word>,
    env: Vec<EnvVar>,
    env_from: bool,
    limits: Option<Resources>,
    requests: Option<Resources>,
}

impl Container {
    fn json(&self, index: usize) -> Value {
        let mut words = Vec::new();
        for word in self.words.iter().take(12) {
            word.push_to(&mut words);
        }
        let script = |words: &[String]| words.join(" ");
        let strings = |items: &[&str]| items.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let (command, args): (Option<Vec<String>>, Vec<String>) = match &self.form {
            Form::Args => (None, [strings(&["dask", "worker"]), words].concat()),
            Form::Hyphenated => (None, [strings(&["dask-worker"]), words].concat()),
            Form::PythonModule => (
                Some(strings(&["python", "-m", "distributed.cli.dask_worker"])),
                words,
            ),
            Form::ShellCommand(prefix) => (
                Some(vec![
                    "sh".into(),
                    "-c".into(),
                    format!("{}dask worker {}", prefix.text(), script(&words)),
                ]),
                Vec::new(),
            ),
            Form::ShellArgs(prefix) => (
                Some(strings(&["bash", "-c"])),
                vec![format!("{}dask-worker {}", prefix.text(), script(&words))],
            ),
            Form::Free => (None, words),
        };
        let mut c = Map::new();
        c.insert(
            "name".into(),
            json!(if index == 0 {
                "worker".to_owned()
            } else {
                format!("c{index}")
            }),
        );
        c.insert("image".into(), json!("ghcr.io/dask/dask:latest"));
        c.insert("x-fuzz-marker".into(), json!(index));
        if let Some(command) = command {
            c.insert("command".into(), json!(command));
        }
        if !args.is_empty() {
            c.insert("args".into(), json!(args));
        }
        if !self.env.is_empty() {
            c.insert(
                "env".into(),
                Value::Array(self.env.iter().take(6).map(EnvVar::json).collect()),
            );
        }
        if self.env_from {
            c.insert(
                "envFrom".into(),
                json!([{"configMapRef": {"name": "sizes"}}]),
            );
        }
        let mut resources = Map::new();
        if let Some(limits) = &self.limits {
            resources.insert("limits".into(), limits.json());
        }
        if let Some(requests) = &self.requests {
            resources.insert("requests".into(), requests.json());
        }
        if !resources.is_empty() {
            c.insert("resources".into(), Value::Object(resources));
        }
        Value::Object(c)
    }
}

#[derive(Arbitrary, Debug)]
enum Settings {
    Default,
    Empty,
    Mode(Mode, bool, bool),
    Headroom(Amount),
    Invalid,
}

#[derive(Arbitrary, Debug)]
enum Mode {
    Reject,
    UseResources,
    UseFlags,
}

impl Settings {
    fn json(&self) -> Value {
        match self {
            Settings::Default => Value::Null,
            Settings::Empty => json!({}),
            Settings::Mode(mode, requests_equal_limits, name) => json!({
                "onMismatch": match mode {
                    Mode::Reject => "reject",
                    Mode::UseResources => "useResources",
                    Mode::UseFlags => "useFlags",
                },
                "requestsEqualLimits": requests_equal_limits,
                "workerNameFromPod": name,
            }),
            Settings::Headroom(amount) => json!({"memoryHeadroom": amount.text()}),
            Settings::Invalid => json!({"deathTimeout": 0}),
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Request {
    kind: Kind,
    operation: Operation,
    labels: Labels,
    containers: Vec<Container>,
    restart_always: bool,
    owned_by_replicaset: bool,
    tolerations: Option<u8>,
    settings: Settings,
}

impl Request {
    fn object(&self) -> Value {
        let mut metadata = json!({"name": "w", "namespace": "dask"});
        if let Some(labels) = self.labels.json() {
            metadata["labels"] = labels;
        }
        if self.owned_by_replicaset {
            metadata["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "1", "controller": true}]);
        }
        let containers: Vec<Value> = self
            .containers
            .iter()
            .take(3)
            .enumerate()
            .map(|(i, c)| c.json(i))
            .collect();
        let mut spec = json!({"containers": containers, "x-fuzz-marker": "spec"});
        if self.restart_always {
            spec["restartPolicy"] = json!("Always");
        }
        match self.tolerations {
            None => {}
            Some(0) => spec["tolerations"] = json!("not a list"),
            Some(n) => {
                spec["tolerations"] = json!([
                    {"key": "k8s.dask.org/dedicated", "value": "worker", "effect": "NoSchedule"},
                    {"key": format!("t{n}"), "operator": "Exists"},
                ])
            }
        }
        self.kind.wrap(json!({"metadata": metadata, "spec": spec}))
    }

    fn payload(&self, object: &Value) -> Vec<u8> {
        let (group, kind) = self.kind.group_kind();
        let operation = match self.operation {
            Operation::Create => "CREATE",
            Operation::Update => "UPDATE",
            Operation::Delete => "DELETE",
        };
        let object = if matches!(self.operation, Operation::Delete) {
            Value::Null
        } else {
            object.clone()
        };
        let payload = json!({
            "request": {
                "uid": "fuzz",
                "kind": {"group": group, "version": "v1", "kind": kind},
                "operation": operation,
                "object": object,
            },
            "settings": self.settings.json(),
        });
        serde_json::to_vec(&payload).unwrap_or_default()
    }
}

/// Every `x-fuzz-marker` field in `value`, with its JSON path.
fn markers(value: &Value, path: &str, found: &mut Vec<(String, Value)>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                if key == "x-fuzz-marker" {
                    found.push((path.to_owned(), v.clone()));
                } else {
                    markers(v, &format!("{path}/{key}"), found);
                }
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                markers(v, &format!("{path}/{i}"), found);
            }
        }
        _ => {}
    }
}

fuzz_target!(|request: Request| {
    let object = request.object();
    let first = evaluate(&request.payload(&object));
    if !first.accepted {
        assert!(
            first.message.as_deref().is_some_and(|m| !m.is_empty()),
            "a rejection without a message"
        );
        return;
    }
    let Some(mutated) = first.mutated_object else {
        return;
    };
    let (mut before, mut after) = (Vec::new(), Vec::new());
    markers(&object, "", &mut before);
    markers(&mutated, "", &mut after);
    assert_eq!(
        before, after,
        "fields the policy does not own were lost:\n{mutated}"
    );

    let second = evaluate(&request.payload(&mutated));
    assert!(
        second.accepted,
        "the mutated object is refused on reinvocation: {:?}\n{mutated}",
        second.message
    );
    assert!(
        second.mutated_object.is_none(),
        "reinvocation changes the mutated object again:\nfirst: {mutated}\nsecond: {}",
        second.mutated_object.unwrap_or_default()
    );
});
