//! Properties over arbitrary input: the decision never panics, and defaulting is
//! idempotent (`mutate(mutate(x)) == mutate(x)`), as a mutating webhook must be.

use dask_worker_spec::{OnMismatch, WorkerDefaults, default_object};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

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
        Just("--".to_owned()),
        Just("&&".to_owned()),
        Just(";".to_owned()),
        Just("'".to_owned()),
        Just("$(X)".to_owned()),
        Just("tcp://s:8786".to_owned()),
        "[a-z0-9-]{1,6}",
    ]
}

fn quantity() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!("2")),
        Just(json!("1500m")),
        Just(json!("6G")),
        Just(json!("6Gi")),
        Just(json!("3G")),
        Just(json!("500m")),
        Just(json!("1")),
        Just(json!(4)),
        Just(json!("bad")),
        Just(json!("7")),
        Just(Value::Null),
        Just(json!([])),
    ]
}

/// Something shaped like a worker container, with random command lines and resources.
fn container() -> impl Strategy<Value = Value> {
    (
        prop::collection::vec(word(), 0..10),
        any::<bool>(),
        prop::option::of(prop::collection::vec(word(), 0..4)),
        prop::option::of((quantity(), quantity())),
        prop::option::of((quantity(), quantity())),
        prop::option::of(arbitrary_json()),
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
    (
        prop::collection::vec(container(), 0..3),
        prop::option::of(arbitrary_json()),
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
    )
        .prop_map(
            |(on_mismatch, requests_equal_limits, worker_name_from_pod)| WorkerDefaults {
                on_mismatch,
                requests_equal_limits,
                worker_name_from_pod,
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

fn check_idempotent(
    group: &str,
    kind: &str,
    object: &Value,
    settings: &WorkerDefaults,
) -> Result<(), TestCaseError> {
    if let Ok(first) = default_object(group, kind, "CREATE", object.clone(), settings)
        && let Some(mutated) = first.mutated
    {
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
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_json_never_panics(object in arbitrary_json(), kind in prop::sample::select(KINDS.to_vec()), op in prop::sample::select(vec!["CREATE", "UPDATE", "DELETE"])) {
        let _ = default_object(kind.0, kind.1, op, object, &WorkerDefaults::default());
    }

    #[test]
    fn worker_pods_are_idempotent(pod in worker_pod(), settings in settings()) {
        check_idempotent("", "Pod", &pod, &settings)?;
    }

    #[test]
    fn templates_are_idempotent(pod in worker_pod(), settings in settings()) {
        let deployment = json!({"spec": {"template": pod}});
        check_idempotent("apps", "Deployment", &deployment, &settings)?;
    }

    #[test]
    fn arbitrary_specs_under_worker_labels_never_panic_and_are_idempotent(spec in arbitrary_json(), settings in settings()) {
        let pod = json!({"metadata": {"labels": {"dask.org/component": "worker"}}, "spec": spec});
        check_idempotent("", "Pod", &pod, &settings)?;
    }
}
