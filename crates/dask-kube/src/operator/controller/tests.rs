//! One reconcile of each resource against a mock API server (tower_test) that checks every
//! call in order, and a fake scheduler HTTP API on loopback. Each scenario runs inside a
//! timeout: an unexpected extra call (which the mock never answers) fails it instead of
//! hanging.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use crate::operator::manifests::{self, CLUSTER_REPLICAS_ANNOTATION, tests::upstream_resource};
use crate::operator::resources::{DaskAutoscalerSpec, DaskClusterStatus, DaskJobStatus};
use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use kube::Client;
use kube::client::Body;
use kube::runtime::reflector::store::Writer;
use serde_json::{Value, json};
use std::sync::Mutex;
use tower_test::mock;

type Handle = mock::Handle<Request<Body>, Response<Body>>;

/// Bounds a scenario.
async fn within<F: std::future::Future>(scenario: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(10), scenario)
        .await
        .expect("the reconcile waited on a call the scenario did not expect")
}

fn store<K>(objects: Vec<K>) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    let mut writer = Writer::<K>::default();
    for object in objects {
        writer.apply_watcher_event(&watcher::Event::Apply(object));
    }
    writer.as_reader()
}

#[derive(Default)]
struct Observed {
    clusters: Vec<DaskCluster>,
    groups: Vec<DaskWorkerGroup>,
    pods: Vec<Pod>,
    deployments: Vec<Deployment>,
    services: Vec<Service>,
}

fn context(observed: Observed, scheduler: Option<&FakeScheduler>) -> (Arc<Context>, Handle) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let stores = Stores {
        clusters: store(observed.clusters),
        groups: store(observed.groups),
        pods: store(observed.pods),
        deployments: store(observed.deployments),
        services: store(observed.services),
    };
    let mut ctx = Context::new(
        KubeConnection::new(client, "default", "https://127.0.0.1:6443"),
        CreateLimits::default(),
        stores,
        SchedulerAccess::Service,
        "dask-kube-operator".into(),
    );
    ctx.fixed_scheduler = scheduler.map(|s| s.address.clone());
    (Arc::new(ctx), handle)
}

fn ok_json(value: &Value) -> Response<Body> {
    Response::builder()
        .status(200)
        .body(Body::from(serde_json::to_vec(value).unwrap()))
        .unwrap()
}

/// Takes the next call, which must be `method path`; answers it with its own body (what
/// the apiserver returns for a create, near enough) and returns that body.
async fn expect(handle: &mut Handle, method: Method, path: &str) -> Value {
    expect_answering(handle, method, path, None).await
}

/// As [`expect`], answering with `answer` (the object a patch returns).
async fn expect_answering(
    handle: &mut Handle,
    method: Method,
    path: &str,
    answer: Option<&Value>,
) -> Value {
    let (request, send) = handle.next_request().await.expect("a call");
    assert_eq!(
        (request.method(), request.uri().path()),
        (&method, path),
        "the next call"
    );
    let bytes = request.into_body().collect().await.unwrap().to_bytes();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let mut answer = answer.cloned().unwrap_or_else(|| body.clone());
    if method == Method::DELETE {
        answer = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"});
    } else if answer.get("metadata").is_none() {
        answer = json!({"metadata": {"name": path.rsplit('/').next().unwrap()}});
    }
    if answer["metadata"].get("name").is_none() {
        answer["metadata"]["name"] = json!("generated");
    }
    send.send_response(ok_json(&answer));
    body
}

/// The next call posts an event on `kind`/`name` with `message`.
async fn expect_event(handle: &mut Handle, kind: &str, name: &str, message: &str) {
    let event = expect(handle, Method::POST, "/api/v1/namespaces/ns/events").await;
    let about = &event["involvedObject"];
    assert_eq!(
        (about["kind"].as_str(), about["name"].as_str()),
        (Some(kind), Some(name))
    );
    assert_eq!(event["reason"], "Logging");
    assert_eq!(event["type"], "Normal");
    assert_eq!(event["message"], message);
}

/// Asserts that no further call comes.
async fn expect_nothing_more(handle: &mut Handle) {
    // Either nothing comes, or the client is gone (the reconcile ended and dropped it).
    let next = tokio::time::timeout(Duration::from_millis(200), handle.next_request()).await;
    if let Ok(Some((request, _))) = next {
        panic!(
            "no further call, but {} {}",
            request.method(),
            request.uri()
        );
    }
}

/// A Dask scheduler's HTTP API on 127.0.0.1 answering from a table of `path -> answers`
/// (given in turn, the last one repeated); records what it was asked.
struct FakeScheduler {
    address: String,
    asked: Arc<Mutex<Vec<(String, Value)>>>,
}

async fn fake_scheduler(routes: Vec<(&'static str, Vec<Value>)>) -> FakeScheduler {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let asked = Arc::new(Mutex::new(Vec::new()));
    let routes = Arc::new(Mutex::new(routes));
    let log = asked.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (routes, log) = (routes.clone(), log.clone());
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                        let (routes, log) = (routes.clone(), log.clone());
                        async move {
                            let path = request.uri().path().to_owned();
                            let bytes = request.into_body().collect().await?.to_bytes();
                            let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                            log.lock().unwrap().push((path.clone(), body));
                            let (status, answer) = {
                                let mut routes = routes.lock().unwrap();
                                match routes.iter_mut().find(|(p, _)| *p == path) {
                                    Some((_, answers)) if answers.len() > 1 => {
                                        (200, answers.remove(0))
                                    }
                                    Some((_, answers)) => (200, answers[0].clone()),
                                    None => (404, json!("not found")),
                                }
                            };
                            Ok::<_, hyper::Error>(
                                Response::builder()
                                    .status(status)
                                    .body(Full::new(Bytes::from(answer.to_string())))
                                    .unwrap(),
                            )
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    FakeScheduler { address, asked }
}

impl FakeScheduler {
    fn paths(&self) -> Vec<String> {
        self.asked
            .lock()
            .unwrap()
            .iter()
            .map(|(p, _)| p.clone())
            .collect()
    }
}

fn cluster(phase: Option<&str>) -> DaskCluster {
    let mut c: DaskCluster = upstream_resource("simplecluster.yaml");
    c.status = phase.map(|p| DaskClusterStatus {
        phase: Some(p.into()),
    });
    c
}

fn default_group(c: &DaskCluster, replicas: i64) -> DaskWorkerGroup {
    let mut g: DaskWorkerGroup =
        serde_json::from_value(manifests::default_worker_group(c).unwrap()).unwrap();
    g.metadata.namespace = Some("ns".into());
    g.metadata.uid = Some("group-uid".into());
    g.spec.worker.replicas = replicas;
    g
}

fn worker_pod(name: &str, phase: &str, ip: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {
            "name": name, "namespace": "ns",
            "labels": {"dask.org/cluster-name": "simple", "dask.org/component": "worker", "dask.org/workergroup-name": "simple-default"},
            "ownerReferences": [{"apiVersion": "kubernetes.dask.org/v1", "kind": "DaskWorkerGroup", "name": "simple-default", "uid": "group-uid"}],
            "creationTimestamp": "2026-01-01T00:00:00Z",
        },
        "status": {"phase": phase, "podIP": ip},
    }))
    .unwrap()
}

const CLUSTERS: &str = "/apis/kubernetes.dask.org/v1/namespaces/ns/daskclusters";
const GROUPS: &str = "/apis/kubernetes.dask.org/v1/namespaces/ns/daskworkergroups";
const PODS: &str = "/api/v1/namespaces/ns/pods";

/// A cluster in phase Created gets its scheduler Deployment, Service and default group,
/// each announced as upstream announces them, then phase Pending by an ordinary patch
/// (the CRD has no status subresource).
#[tokio::test]
async fn cluster_created_makes_its_parts_then_pending() {
    let c = cluster(Some("Created"));
    let answer = serde_json::to_value(&c).unwrap();
    let (ctx, mut handle) = context(Observed::default(), None);
    within(async {
        let reconcile = tokio::spawn(reconcile_cluster(Arc::new(c), ctx));
        expect_event(
            &mut handle,
            "DaskCluster",
            "simple",
            "Creating Dask cluster components.",
        )
        .await;
        let d = expect(
            &mut handle,
            Method::POST,
            "/apis/apps/v1/namespaces/ns/deployments",
        )
        .await;
        assert_eq!(d["metadata"]["name"], "simple-scheduler");
        assert_eq!(d["metadata"]["ownerReferences"][0]["kind"], "DaskCluster");
        expect_event(
            &mut handle,
            "DaskCluster",
            "simple",
            "Scheduler deployment simple-scheduler created in ns.",
        )
        .await;
        let s = expect(&mut handle, Method::POST, "/api/v1/namespaces/ns/services").await;
        assert_eq!(s["metadata"]["name"], "simple-scheduler");
        expect_event(
            &mut handle,
            "DaskCluster",
            "simple",
            "Scheduler service simple-scheduler created in ns.",
        )
        .await;
        let g = expect(&mut handle, Method::POST, GROUPS).await;
        assert_eq!(g["metadata"]["name"], "simple-default");
        expect_event(
            &mut handle,
            "DaskCluster",
            "simple",
            "Worker group simple-default created in ns.",
        )
        .await;
        let patch = expect_answering(
            &mut handle,
            Method::PATCH,
            &format!("{CLUSTERS}/simple"),
            Some(&answer),
        )
        .await;
        assert_eq!(patch, json!({"status": {"phase": "Pending"}}));
        assert_eq!(reconcile.await.unwrap().unwrap(), Requeue::await_change());
        expect_nothing_more(&mut handle).await;
    })
    .await;
}

/// A Running cluster whose scheduler has been idle longer than its idleTimeout is deleted,
/// as upstream's 5 s timer does.
#[tokio::test]
async fn an_idle_cluster_is_deleted() {
    let scheduler = fake_scheduler(vec![(
        "/api/v1/check_idle",
        vec![json!({"idle_since": 1000.0})],
    )])
    .await;
    let mut c = cluster(Some("Running"));
    c.spec.idle_timeout = 60;
    let mut deployment: Deployment =
        serde_json::from_value(manifests::scheduler_deployment(&c).unwrap()).unwrap();
    deployment.metadata.namespace = Some("ns".into());
    let mut service: Service =
        serde_json::from_value(manifests::scheduler_service(&c).unwrap()).unwrap();
    service.metadata.namespace = Some("ns".into());
    let g = default_group(&c, 2);
    let observed = Observed {
        deployments: vec![deployment],
        services: vec![service],
        groups: vec![g],
        ..Observed::default()
    };
    let (ctx, mut handle) = context(observed, Some(&scheduler));
    within(async {
        let reconcile = tokio::spawn(reconcile_cluster(Arc::new(c), ctx));
        expect_event(
            &mut handle,
            "DaskCluster",
            "simple",
            "Scheduler idle for longer than 60 seconds, deleting DaskCluster simple.",
        )
        .await;
        expect(&mut handle, Method::DELETE, &format!("{CLUSTERS}/simple")).await;
        assert_eq!(
            reconcile.await.unwrap().unwrap(),
            Requeue::requeue(crate::operator::reconcile::TIMER_PERIOD)
        );
        expect_nothing_more(&mut handle).await;
    })
    .await;
    assert_eq!(scheduler.paths(), ["/api/v1/check_idle"]);
}

/// A group short of a worker creates one pod; a second reconcile before the watch shows
/// that pod creates nothing (the expectation stands in for it).
#[tokio::test]
async fn a_group_creates_missing_workers_once() {
    let c = cluster(Some("Running"));
    let mut g = default_group(&c, 2);
    g.metadata.owner_references = Some(vec![manifests::owner_ref(&c).unwrap()]);
    let observed = Observed {
        clusters: vec![c],
        pods: vec![worker_pod(
            "simple-default-worker-aaaaaaaaaa",
            "Running",
            "10.0.0.1",
        )],
        ..Observed::default()
    };
    let (ctx, mut handle) = context(observed, None);
    let g = Arc::new(g);
    within(async {
        let reconcile = tokio::spawn(reconcile_worker_group(g.clone(), ctx.clone()));
        let pod = expect(&mut handle, Method::POST, PODS).await;
        let name = pod["metadata"]["name"].as_str().unwrap().to_owned();
        assert!(
            name.starts_with("simple-default-worker-")
                && name.len() == "simple-default-worker-".len() + 10,
            "{name}"
        );
        let env = &pod["spec"]["containers"][0]["env"];
        assert!(
            env.as_array()
                .unwrap()
                .contains(&json!({"name": "DASK_WORKER_NAME", "value": name}))
        );
        assert_eq!(pod["metadata"]["ownerReferences"][0]["uid"], "group-uid");
        expect_event(
            &mut handle,
            "DaskWorkerGroup",
            "simple-default",
            "Scaled worker group simple-default up to 2 workers.",
        )
        .await;
        assert_eq!(
            reconcile.await.unwrap().unwrap(),
            Requeue::requeue(crate::operator::reconcile::TIMER_PERIOD),
            "the new pod is expected: look again"
        );

        let again = tokio::spawn(reconcile_worker_group(g.clone(), ctx.clone()));
        assert_eq!(
            again.await.unwrap().unwrap(),
            Requeue::requeue(crate::operator::reconcile::TIMER_PERIOD)
        );
        expect_nothing_more(&mut handle).await;
    })
    .await;
}

/// Scaling a group down retires the connected worker through the scheduler, then takes a
/// fresh look (the group's pods from the API, the scheduler's workers) and deletes the pod
/// only when the scheduler confirmed and no worker is in it any more.
#[rstest::rstest]
#[case::confirmed_and_gone(json!({"tcp://10.0.0.1:4000": {"name": "simple-default-worker-aaaaaaaaaa"}}), json!([]), true)]
#[case::refused(json!({}), json!([]), false)]
#[case::restarted_by_its_nanny(
    json!({"tcp://10.0.0.1:4000": {"name": "simple-default-worker-aaaaaaaaaa"}}),
    json!([{"name": "simple-default-worker-aaaaaaaaaa", "address": "tcp://10.0.0.1:4999"}]),
    false
)]
#[tokio::test]
async fn a_group_retires_before_deleting(
    #[case] retired: Value,
    #[case] workers_after: Value,
    #[case] deleted: bool,
) {
    let before =
        json!([{"name": "simple-default-worker-aaaaaaaaaa", "address": "tcp://10.0.0.1:4000"}]);
    let listed = |workers: &Value| json!({"num_workers": workers.as_array().unwrap().len(), "workers": workers});
    let scheduler = fake_scheduler(vec![
        (
            "/api/v1/get_workers",
            vec![listed(&before), listed(&workers_after)],
        ),
        ("/json/identity.json", vec![json!({"workers": {}})]),
        ("/api/v1/retire_workers", vec![retired]),
    ])
    .await;
    let c = cluster(Some("Running"));
    let mut g = default_group(&c, 0);
    g.metadata.owner_references = Some(vec![manifests::owner_ref(&c).unwrap()]);
    let pod = worker_pod("simple-default-worker-aaaaaaaaaa", "Running", "10.0.0.1");
    let pod_list = json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [pod]});
    let observed = Observed {
        clusters: vec![c],
        pods: vec![pod],
        ..Observed::default()
    };
    let (ctx, mut handle) = context(observed, Some(&scheduler));
    within(async {
        let reconcile = tokio::spawn(reconcile_worker_group(Arc::new(g), ctx));
        expect_event(
            &mut handle,
            "DaskWorkerGroup",
            "simple-default",
            "Workers to close: [\"simple-default-worker-aaaaaaaaaa\"]",
        )
        .await;
        let (request, send) = handle.next_request().await.unwrap();
        assert_eq!(
            (request.method(), request.uri().path()),
            (&Method::GET, PODS)
        );
        assert_eq!(
            request.uri().query(),
            Some("&labelSelector=dask.org%2Fworkergroup-name%3Dsimple-default&limit=250"),
            "the library's lean list of the group's pods"
        );
        send.send_response(ok_json(&pod_list));
        if deleted {
            expect(
                &mut handle,
                Method::DELETE,
                &format!("{PODS}/simple-default-worker-aaaaaaaaaa"),
            )
            .await;
        }
        expect_event(
            &mut handle,
            "DaskWorkerGroup",
            "simple-default",
            "Scaled worker group simple-default down to 0 workers.",
        )
        .await;
        reconcile.await.unwrap().unwrap();
        expect_nothing_more(&mut handle).await;
    })
    .await;
    let asked = scheduler.asked.lock().unwrap().clone();
    let retire = asked
        .iter()
        .find(|(p, _)| p == "/api/v1/retire_workers")
        .expect("asked to retire");
    assert_eq!(retire.1, json!({"workers": ["tcp://10.0.0.1:4000"]}));
}

/// An autoscaler sets its group's replicas to the scheduler's adaptive target.
#[tokio::test]
async fn an_autoscaler_scales_its_group_to_the_schedulers_target() {
    let scheduler = fake_scheduler(vec![(
        "/api/v1/adaptive_target",
        vec![json!({"workers": 3})],
    )])
    .await;
    let c = cluster(Some("Running"));
    let g = default_group(&c, 1);
    let scheduler_pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "simple-scheduler-abc", "namespace": "ns", "labels": {"dask.org/cluster-name": "simple", "dask.org/component": "scheduler"}},
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
    }))
    .unwrap();
    let mut a = DaskAutoscaler::new(
        "simple",
        DaskAutoscalerSpec {
            cluster: "simple".into(),
            minimum: 0,
            maximum: 10,
        },
    );
    a.metadata.namespace = Some("ns".into());
    a.metadata.owner_references = Some(vec![manifests::owner_ref(&c).unwrap()]);
    let answer = serde_json::to_value(&g).unwrap();
    let observed = Observed {
        clusters: vec![c],
        groups: vec![g],
        pods: vec![scheduler_pod],
        ..Observed::default()
    };
    let (ctx, mut handle) = context(observed, Some(&scheduler));
    within(async {
        let reconcile = tokio::spawn(reconcile_autoscaler(Arc::new(a), ctx));
        let patch = expect_answering(
            &mut handle,
            Method::PATCH,
            &format!("{GROUPS}/simple-default"),
            Some(&answer),
        )
        .await;
        assert_eq!(patch, json!({"spec": {"worker": {"replicas": 3}}}));
        expect_event(
            &mut handle,
            "DaskAutoscaler",
            "simple",
            "Autoscaler updated simple worker count from 1 to 3",
        )
        .await;
        assert_eq!(
            reconcile.await.unwrap().unwrap(),
            Requeue::requeue(crate::operator::reconcile::TIMER_PERIOD)
        );
        expect_nothing_more(&mut handle).await;
    })
    .await;
    assert_eq!(scheduler.paths(), ["/api/v1/adaptive_target"]);
}

/// A new DaskJob is marked JobCreated through the status subresource.
#[tokio::test]
async fn a_new_job_is_marked_created() {
    let job: DaskJob = upstream_resource("simplejob.yaml");
    let answer = serde_json::to_value(&job).unwrap();
    let (ctx, mut handle) = context(Observed::default(), None);
    within(async {
        let reconcile = tokio::spawn(reconcile_job(Arc::new(job), ctx));
        expect_event(
            &mut handle,
            "DaskJob",
            "simple-job",
            "A DaskJob has been created called simple-job in ns.",
        )
        .await;
        let patch = expect_answering(
            &mut handle,
            Method::PATCH,
            "/apis/kubernetes.dask.org/v1/namespaces/ns/daskjobs/simple-job/status",
            Some(&answer),
        )
        .await;
        assert_eq!(patch, json!({"status": {"jobStatus": "JobCreated"}}));
        reconcile.await.unwrap().unwrap();
        expect_nothing_more(&mut handle).await;
    })
    .await;
}

/// A job whose runner succeeded deletes its cluster and records the end.
#[tokio::test]
async fn a_finished_job_removes_its_cluster() {
    let mut job: DaskJob = upstream_resource("simplejob.yaml");
    job.status = Some(DaskJobStatus {
        job_status: Some("Running".into()),
        cluster_name: Some("simple-job".into()),
        job_runner_pod_name: Some("simple-job-runner".into()),
        start_time: Some("2026-05-01T09:59:00Z".into()),
        end_time: None,
    });
    let job_cluster: DaskCluster = serde_json::from_value({
        let mut v = manifests::job_cluster(&job).unwrap();
        v["metadata"]["namespace"] = json!("ns");
        v
    })
    .unwrap();
    let runner: Pod = serde_json::from_value(json!({"metadata": {"name": "simple-job-runner", "namespace": "ns"}, "status": {"phase": "Succeeded"}})).unwrap();
    let observed = Observed {
        clusters: vec![job_cluster],
        pods: vec![runner],
        ..Observed::default()
    };
    let answer = serde_json::to_value(&job).unwrap();
    let (ctx, mut handle) = context(observed, None);
    within(async {
        let reconcile = tokio::spawn(reconcile_job(Arc::new(job), ctx));
        expect_event(
            &mut handle,
            "DaskJob",
            "simple-job",
            "Job succeeded, deleting Dask cluster.",
        )
        .await;
        expect(
            &mut handle,
            Method::DELETE,
            &format!("{CLUSTERS}/simple-job"),
        )
        .await;
        let patch = expect_answering(
            &mut handle,
            Method::PATCH,
            "/apis/kubernetes.dask.org/v1/namespaces/ns/daskjobs/simple-job/status",
            Some(&answer),
        )
        .await;
        assert_eq!(patch["status"]["jobStatus"], "Successful");
        assert_eq!(patch["status"]["startTime"], "2026-05-01T09:59:00Z");
        assert!(patch["status"]["endTime"].as_str().unwrap().ends_with('Z'));
        reconcile.await.unwrap().unwrap();
        expect_nothing_more(&mut handle).await;
    })
    .await;
}

/// `kubectl scale daskcluster` reaches the default group once; the group's annotation
/// records it.
#[tokio::test]
async fn cluster_scale_reaches_the_default_group() {
    let mut c = cluster(Some("Running"));
    c.spec.worker.replicas = 5;
    let mut deployment: Deployment =
        serde_json::from_value(manifests::scheduler_deployment(&c).unwrap()).unwrap();
    deployment.metadata.namespace = Some("ns".into());
    let mut service: Service =
        serde_json::from_value(manifests::scheduler_service(&c).unwrap()).unwrap();
    service.metadata.namespace = Some("ns".into());
    let mut g = default_group(&c, 2);
    g.metadata
        .annotations
        .get_or_insert_default()
        .insert(CLUSTER_REPLICAS_ANNOTATION.into(), "2".into());
    let answer = serde_json::to_value(&g).unwrap();
    let observed = Observed {
        deployments: vec![deployment],
        services: vec![service],
        groups: vec![g],
        ..Observed::default()
    };
    let (ctx, mut handle) = context(observed, None);
    within(async {
        let reconcile = tokio::spawn(reconcile_cluster(Arc::new(c), ctx));
        let patch = expect_answering(
            &mut handle,
            Method::PATCH,
            &format!("{GROUPS}/simple-default"),
            Some(&answer),
        )
        .await;
        assert_eq!(patch["spec"]["worker"]["replicas"], 5);
        assert_eq!(
            patch["metadata"]["annotations"][CLUSTER_REPLICAS_ANNOTATION],
            "5"
        );
        reconcile.await.unwrap().unwrap();
        expect_nothing_more(&mut handle).await;
    })
    .await;
}

/// A pod creation the API refuses (403: no service account yet, a quota) leaves no
/// expectation behind: the retry creates the worker at once instead of counting a pod
/// that will never appear (found against a real apiserver: workers came only after the
/// expectation expired, 60 s later).
#[tokio::test]
async fn a_refused_creation_is_retried_at_once() {
    let c = cluster(Some("Running"));
    let mut g = default_group(&c, 1);
    g.metadata.owner_references = Some(vec![manifests::owner_ref(&c).unwrap()]);
    let observed = Observed {
        clusters: vec![c],
        ..Observed::default()
    };
    let (ctx, mut handle) = context(observed, None);
    let g = Arc::new(g);
    within(async {
        let first = tokio::spawn(reconcile_worker_group(g.clone(), ctx.clone()));
        let (request, send) = handle.next_request().await.unwrap();
        assert_eq!((request.method(), request.uri().path()), (&Method::POST, PODS));
        let refusal = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "pods is forbidden: error looking up service account ns/default", "reason": "Forbidden", "code": 403});
        send.send_response(
            Response::builder()
                .status(403)
                .body(Body::from(serde_json::to_vec(&refusal).unwrap()))
                .unwrap(),
        );
        // The failure is reported on the group, naming the missing permission and the
        // API's reason (the library's batch stops at a refusal that fails every call).
        let event = expect(&mut handle, Method::POST, "/api/v1/namespaces/ns/events").await;
        assert_eq!(event["type"], "Warning");
        let message = event["message"].as_str().unwrap();
        assert!(message.contains("lacks permission to create pods in namespace ns"), "{message}");
        assert!(message.ends_with("(pods is forbidden: error looking up service account ns/default)"), "{message}");
        assert!(first.await.unwrap().is_err());

        let retry = tokio::spawn(reconcile_worker_group(g.clone(), ctx.clone()));
        expect(&mut handle, Method::POST, PODS).await;
        expect_event(&mut handle, "DaskWorkerGroup", "simple-default", "Scaled worker group simple-default up to 1 workers.").await;
        retry.await.unwrap().unwrap();
        expect_nothing_more(&mut handle).await;
    })
    .await;
}

/// A stored pod keeps what reconciles read (labels, owner, phase, conditions, IP) and loses
/// its `managedFields` and, in the pod store, its spec: the worker state and the scheduler's
/// readiness read from it are those of the whole pod.
#[test]
fn a_stored_pod_keeps_what_reconciles_read() {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {
            "name": "c-default-worker-abc12", "namespace": "ns",
            "labels": {"dask.org/cluster-name": "c", "dask.org/component": "worker"},
            "ownerReferences": [{"apiVersion": "kubernetes.dask.org/v1", "kind": "DaskWorkerGroup",
                                 "name": "c-default", "uid": "u1"}],
            "managedFields": [
                {"manager": "dask-kube", "operation": "Update", "apiVersion": "v1",
                 "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {"f:labels": {".": {}}}}},
                {"manager": "kubelet", "operation": "Update", "apiVersion": "v1",
                 "subresource": "status", "fieldsType": "FieldsV1",
                 "fieldsV1": {"f:status": {"f:phase": {}}}},
            ],
        },
        "spec": {"containers": [{"name": "worker", "image": "ghcr.io/dask/dask:latest",
                                 "args": ["dask", "worker", "--nthreads", "2"]}],
                 "tolerations": [{"key": "k8s.dask.org/dedicated", "operator": "Equal",
                                  "value": "worker", "effect": "NoSchedule"}]},
        "status": {"phase": "Running", "podIP": "10.244.1.7",
                   "podIPs": [{"ip": "10.244.1.7"}],
                   "conditions": [{"type": "Ready", "status": "True"}],
                   "containerStatuses": [{"name": "worker", "image": "i", "imageID": "",
                                          "ready": true, "restartCount": 0,
                                          "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}]},
    }))
    .unwrap();
    let mut stored = pod.clone();
    prune(&mut stored);
    assert_eq!(stored.metadata.managed_fields, None);
    let mut expected = pod.clone();
    expected.metadata.managed_fields = None;
    assert_eq!(stored, expected, "nothing but managedFields is dropped");

    let mut stored = pod.clone();
    prune_pod(&mut stored);
    assert_eq!(
        (
            stored.metadata.managed_fields.as_ref(),
            stored.spec.as_ref()
        ),
        (None, None)
    );
    assert_eq!(stored.metadata, expected.metadata);
    assert_eq!(stored.status, pod.status);
    assert_eq!(
        WorkerPodState::from_pod(&stored),
        WorkerPodState::from_pod(&pod)
    );

    // A pod held by the start window keeps its gates, and nothing else of its spec.
    let mut gated = pod.clone();
    gated.spec.as_mut().unwrap().scheduling_gates =
        Some(vec![k8s_openapi::api::core::v1::PodSchedulingGate {
            name: crate::START_GATE.into(),
        }]);
    let mut stored = gated.clone();
    prune_pod(&mut stored);
    assert!(crate::holds_start_gate(&stored));
    assert_eq!(
        stored.spec.map(|s| (s.containers.len(), s.tolerations)),
        Some((0, None))
    );
}

fn worker_meta(name: &str, component: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some("ns".into()),
        labels: Some([(COMPONENT_LABEL.to_owned(), component.to_owned())].into()),
        ..Default::default()
    }
}

/// A trigger stream passes the changes its filter keeps, in order; one that fell behind the
/// buffer gets every kept object of the store instead of losing the changes it missed.
#[tokio::test]
async fn touches_keep_their_order_and_a_lagging_subscriber_gets_the_whole_store() {
    let (touches, _) = tokio::sync::broadcast::channel::<PartialObjectMeta<Pod>>(2);
    let pods: Vec<Pod> = ["w1", "w2", "w3"]
        .iter()
        .map(|n| Pod {
            metadata: worker_meta(n, WORKER_COMPONENT),
            ..Default::default()
        })
        .chain([Pod {
            metadata: worker_meta("s", SCHEDULER_COMPONENT),
            ..Default::default()
        }])
        .collect();
    let mut stream = Box::pin(touches_of(&touches, store(pods), is_worker));
    let send = |m: ObjectMeta| touches.send(m.into_request_partial::<Pod>()).unwrap();
    send(worker_meta("s", SCHEDULER_COMPONENT));
    send(worker_meta("w1", WORKER_COMPONENT));
    let next = within(stream.next()).await.unwrap().unwrap();
    assert_eq!(
        next.metadata.name.as_deref(),
        Some("w1"),
        "the scheduler pod is not a worker"
    );
    for n in ["a", "b", "c"] {
        send(worker_meta(n, WORKER_COMPONENT));
    }
    // Three sent into a buffer of two: the subscriber lagged, so the store's workers come.
    let mut names = Vec::new();
    for _ in 0..3 {
        names.push(
            within(stream.next())
                .await
                .unwrap()
                .unwrap()
                .metadata
                .name
                .unwrap(),
        );
    }
    names.sort();
    assert_eq!(names, ["w1", "w2", "w3"]);
}
