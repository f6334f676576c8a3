//! Properties over arbitrary input: the decision never panics, and defaulting is
//! idempotent (`mutate(mutate(x)) == mutate(x)`), as a mutating webhook must be.
//!
//! An idempotence property checks nothing on a case the first pass refuses or leaves
//! alone, so the pod-shaped properties count their cases and require that enough of them
//! were really mutated, and that enough had their worker containers edited (flags or
//! resources, not only the pod's tolerations).

use dask_worker_spec::{MemoryQuantity, OnMismatch, WorkerDefaults, default_object};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Map, Value, json};
use std::cell::RefCell;

/// Any JSON at all, a few levels deep.
fn arbitrary_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        "\\PC{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-zA-Z]{1,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn word() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("dask".to_owned()),
        Just("worker".to_owned()),
        Just("dask-worker".to_owned()),
        Just("--nthreads".to_owned()),
        Just("--nworkers".to_owned()),
        Just("--nprocs".to_owned()),
        Just("--memory-limit".to_owned()),
        Just("--death-timeout".to_owned()),
        Just("--name".to_owned()),
        Just("--nthreads=2".to_owned()),
        Just("--memory-limit=1GiB".to_owned()),
        Just("2".to_owned()),
        Just("0".to_owned()),
        Just("-1".to_owned()),
        Just("auto".to_owned()),
        Just("6GB".to_owned()),
        Just("1.5GiB".to_owned()),
        Just("0.5".to_owned()),
        Just("500m".to_owned()),
        Just("--memory-limit=$(MEM)".to_owned()),
        Just("$(MEM)".to_owned()),
        Just("$(N)".to_owned()),
        Just("$MEM".to_owned()),
        Just("${THREADS}".to_owned()),
        Just("$(nproc)".to_owned()),
        Just("8.2GB".to_owned()),
        Just("2.5".to_owned()),
        Just("4096".to_owned()),
        Just("1_000MB".to_owned()),
        Just("3GiB".to_owned()),
        Just("--".to_owned()),
        Just("&&".to_owned()),
        Just(";".to_owned()),
        Just("'".to_owned()),
        Just("$(X)".to_owned()),
        Just("tcp://s:8786".to_owned()),
        "[a-z0-9-]{1,6}",
    ]
}

/// A cpu quantity: mostly valid, sometimes not.
fn cpu_quantity() -> impl Strategy<Value = Value> {
    prop_oneof![
        8 => prop::sample::select(vec!["1", "2", "4", "1500m", "500m"]).prop_map(|q| json!(q)),
        1 => Just(json!(4)),
        1 => prop::sample::select(vec![json!("bad"), json!([]), Value::Null]),
    ]
}

/// A memory quantity: mostly valid, sometimes not (half a byte, too small, not a quantity).
fn memory_quantity() -> impl Strategy<Value = Value> {
    prop_oneof![
        8 => prop::sample::select(vec!["1Gi", "4Gi", "6G", "12G", "3G", "6268435456", "8Gi"])
            .prop_map(|q| json!(q)),
        2 => prop::sample::select(vec![json!("500m"), json!("bad"), json!("7"), json!("200Mi"), json!([]), Value::Null]),
    ]
}

/// A worker invocation (most of the time), flags with values, and noise.
fn worker_words() -> impl Strategy<Value = Vec<String>> {
    let invocation = prop_oneof![
        4 => Just(vec!["dask", "worker"]),
        2 => Just(vec!["dask-worker"]),
        1 => Just(vec!["python", "-m", "distributed.cli.dask_worker"]),
        1 => Just(vec![]),
    ];
    let count = || {
        prop_oneof![
            12 => prop::sample::select(vec!["1", "2", "3", "4", "0", "auto", "$(N)"]).prop_map(str::to_owned),
            1 => word(),
        ]
    };
    let memory = prop_oneof![
        12 => prop::sample::select(vec!["1GB", "2GiB", "3GB", "6GB", "8.2GB", "1.5GiB", "512MiB", "auto", "$(MEM)"])
            .prop_map(str::to_owned),
        1 => word(),
    ];
    let flag_value = prop_oneof![
        3 => ("--nthreads", count()),
        2 => ("--nworkers", count()),
        1 => ("--nprocs", count()),
        4 => ("--memory-limit", memory),
        1 => ("--death-timeout", count()),
        1 => ("--name", word()),
    ];
    (
        invocation,
        prop::collection::vec((flag_value, any::<bool>()), 0..5),
        prop_oneof![3 => Just(Vec::new()), 1 => prop::collection::vec(word(), 1..3)],
    )
        .prop_map(|(invocation, flags, noise)| {
            let mut words: Vec<String> = invocation.into_iter().map(str::to_owned).collect();
            for ((flag, value), joined) in flags {
                if joined {
                    words.push(format!("{flag}={value}"));
                } else {
                    words.push(flag.to_owned());
                    words.push(value);
                }
            }
            words.extend(noise);
            words
        })
}

/// An env entry a flag may refer to: a literal, a `resourceFieldRef` or a runtime source.
fn env_var() -> impl Strategy<Value = Value> {
    let name = prop::sample::select(vec!["MEM", "N", "THREADS", "X"]);
    let source = prop_oneof![
        prop::sample::select(vec!["4GB", "2", "0", "auto", "$(N)GB", "-1", "2.5", "1GiB"])
            .prop_map(|v| json!({"value": v})),
        (
            prop::sample::select(vec![
                "limits.memory",
                "requests.memory",
                "limits.cpu",
                "requests.cpu"
            ]),
            prop::option::of(prop::sample::select(vec!["1", "1Mi", "1m", "1G", "bad"])),
        )
            .prop_map(|(resource, divisor)| {
                let mut field = json!({"resource": resource});
                if let Some(d) = divisor {
                    field["divisor"] = json!(d);
                }
                json!({"valueFrom": {"resourceFieldRef": field}})
            }),
        Just(json!({"valueFrom": {"configMapKeyRef": {"name": "c", "key": "k"}}})),
    ];
    (name, source).prop_map(|(name, mut source)| {
        source["name"] = json!(name);
        source
    })
}

/// Something shaped like a worker container, with random command lines and resources.
fn container() -> impl Strategy<Value = Value> {
    (
        worker_words(),
        any::<bool>(),
        prop::option::of(prop::collection::vec(word(), 0..4)),
        prop::option::of((cpu_quantity(), memory_quantity())),
        prop::option::of((cpu_quantity(), memory_quantity())),
        prop_oneof![
            5 => prop::collection::vec(env_var(), 0..4).prop_map(|e| Some(Value::Array(e))),
            1 => prop::option::of(arbitrary_json()),
        ],
    )
        .prop_map(|(words, in_shell, command, limits, requests, env)| {
            let mut c = Map::new();
            c.insert("name".into(), json!("w"));
            if in_shell {
                c.insert("command".into(), json!(["sh", "-c", words.join(" ")]));
            } else {
                if let Some(command) = command {
                    c.insert("command".into(), json!(command));
                }
                c.insert("args".into(), json!(words));
            }
            let mut resources = Map::new();
            if let Some((cpu, mem)) = limits {
                resources.insert("limits".into(), json!({"cpu": cpu, "memory": mem}));
            }
            if let Some((cpu, mem)) = requests {
                resources.insert("requests".into(), json!({"cpu": cpu, "memory": mem}));
            }
            c.insert("resources".into(), Value::Object(resources));
            if let Some(env) = env {
                c.insert("env".into(), env);
            }
            Value::Object(c)
        })
}

fn worker_pod() -> impl Strategy<Value = Value> {
    let tolerations = prop_oneof![
        4 => Just(None),
        2 => Just(Some(json!([{"key": "gpu", "operator": "Exists"},
            {"key": "k8s.dask.org/dedicated", "value": "worker", "effect": "NoSchedule"}]))),
        1 => prop::option::of(arbitrary_json()),
    ];
    (
        prop::collection::vec(container(), 1..3),
        tolerations,
        any::<bool>(),
    )
        .prop_map(|(containers, tolerations, classic)| {
            let labels = if classic {
                json!({"app": "dask", "component": "dask-worker"})
            } else {
                json!({"dask.org/component": "worker"})
            };
            let mut spec = json!({"containers": containers});
            if let Some(t) = tolerations {
                spec["tolerations"] = t;
            }
            json!({"metadata": {"labels": labels}, "spec": spec})
        })
}

fn settings() -> impl Strategy<Value = WorkerDefaults> {
    (
        prop::sample::select(vec![
            OnMismatch::Reject,
            OnMismatch::UseResources,
            OnMismatch::UseFlags,
        ]),
        any::<bool>(),
        any::<bool>(),
        prop::sample::select(vec![0u64, 256 << 20, 1 << 30]),
    )
        .prop_map(
            |(on_mismatch, requests_equal_limits, worker_name_from_pod, headroom)| WorkerDefaults {
                on_mismatch,
                requests_equal_limits,
                worker_name_from_pod,
                memory_headroom: MemoryQuantity::from_bytes(headroom),
                ..WorkerDefaults::default()
            },
        )
}

const KINDS: [(&str, &str); 6] = [
    ("", "Pod"),
    ("apps", "Deployment"),
    ("batch", "Job"),
    ("batch", "CronJob"),
    ("kubernetes.dask.org", "DaskWorkerGroup"),
    ("", "ConfigMap"),
];

/// What the first pass did with a case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FirstPass {
    Refused,
    Unchanged,
    /// Mutated; `containers` when a container (flags, resources, env) changed too.
    Mutated {
        containers: bool,
    },
}

/// Checks that a second pass over the first pass's result changes nothing, and says what
/// the first pass did.
fn check_idempotent(
    group: &str,
    kind: &str,
    object: &Value,
    settings: &WorkerDefaults,
    spec_path: &[&str],
) -> Result<FirstPass, TestCaseError> {
    let Ok(first) = default_object(group, kind, "CREATE", object.clone(), settings) else {
        return Ok(FirstPass::Refused);
    };
    let Some(mutated) = first.mutated else {
        return Ok(FirstPass::Unchanged);
    };
    let second = default_object(group, kind, "CREATE", mutated.clone(), settings);
    prop_assert!(
        second.is_ok(),
        "second pass refused: {second:?}\nfirst result: {mutated}"
    );
    prop_assert_eq!(
        second.ok().and_then(|s| s.mutated),
        None,
        "second pass changed {}",
        mutated
    );
    let containers = |v: &Value| spec_path.iter().fold(v, |v, k| &v[*k])["containers"].clone();
    Ok(FirstPass::Mutated {
        containers: containers(object) != containers(&mutated),
    })
}

/// How many generated cases the first pass refused, left alone and mutated.
#[derive(Debug, Default)]
struct Tally {
    cases: usize,
    refused: usize,
    unchanged: usize,
    mutated: usize,
    containers_edited: usize,
}

impl Tally {
    fn record(&mut self, pass: FirstPass) {
        self.cases += 1;
        match pass {
            FirstPass::Refused => self.refused += 1,
            FirstPass::Unchanged => self.unchanged += 1,
            FirstPass::Mutated { containers } => {
                self.mutated += 1;
                self.containers_edited += usize::from(containers);
            }
        }
    }

    /// Fails unless at least `mutated` percent of the cases were mutated and `edited`
    /// percent had a container edited: below that the property tests too little.
    fn require(&self, name: &str, mutated: usize, edited: usize) {
        eprintln!(
            "{name}: {} generated cases: {} mutated ({} with containers edited), {} left \
             unchanged, {} refused",
            self.cases, self.mutated, self.containers_edited, self.unchanged, self.refused
        );
        assert!(
            self.mutated * 100 >= self.cases * mutated,
            "{name}: only {} of {} cases were mutated (floor {mutated}%)",
            self.mutated,
            self.cases
        );
        assert!(
            self.containers_edited * 100 >= self.cases * edited,
            "{name}: only {} of {} cases had a container edited (floor {edited}%)",
            self.containers_edited,
            self.cases
        );
    }
}

/// Runs an idempotence property over `CASES` generated objects and tallies the first passes.
fn tally_idempotence(
    wrap: impl Fn(Value) -> (&'static str, &'static str, Value, &'static [&'static str]),
) -> Tally {
    const CASES: u32 = 2_000;
    let mut runner = TestRunner::new(Config {
        cases: CASES,
        ..Config::default()
    });
    let tally = RefCell::new(Tally::default());
    let result = runner.run(&(worker_pod(), settings()), |(pod, settings)| {
        let (group, kind, object, spec_path) = wrap(pod);
        let pass = check_idempotent(group, kind, &object, &settings, spec_path)?;
        tally.borrow_mut().record(pass);
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    tally.into_inner()
}

#[test]
fn worker_pods_are_idempotent() {
    tally_idempotence(|pod| ("", "Pod", pod, &["spec"])).require("worker pods", 35, 30);
}

#[test]
fn templates_are_idempotent() {
    tally_idempotence(|pod| {
        (
            "apps",
            "Deployment",
            json!({"spec": {"template": pod}}),
            &["spec", "template", "spec"],
        )
    })
    .require("deployment templates", 35, 30);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_json_never_panics(object in arbitrary_json(), kind in prop::sample::select(KINDS.to_vec()), op in prop::sample::select(vec!["CREATE", "UPDATE", "DELETE"])) {
        let _ = default_object(kind.0, kind.1, op, object, &WorkerDefaults::default());
    }

    #[test]
    fn arbitrary_specs_under_worker_labels_never_panic_and_are_idempotent(spec in arbitrary_json(), settings in settings()) {
        let pod = json!({"metadata": {"labels": {"dask.org/component": "worker"}}, "spec": spec});
        check_idempotent("", "Pod", &pod, &settings, &["spec"])?;
    }
}
