//! `deploy_mode="operator"`: `KubeCluster` creates a `DaskCluster` and the operator of the
//! cluster (dask-kube's, or upstream's) makes the rest, as dask-kubernetes' operator-era
//! client does; the library's [`OperatorCluster`]. [`OperatorNativeCluster`] answers the
//! calls Python's `KubeCluster` makes of a native cluster (`scale`, `adapt`, `workers`,
//! `logs`, `close`, ...) as [`crate::NativeCluster`] does, so one Python class serves both.

use crate::config_source::PythonConfig;
use crate::options::ClusterOptions;
use crate::{block_on, interpreter_exit, json_err, runtime, to_json, to_py_err};
use dask_kube::{
    ClusterApi, ConfigSource, CreateMode, Error, OperatorCluster, OperatorClusterOptions,
    delete_dask_cluster,
};
use pyo3::prelude::*;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::RwLock;

/// Bound on waiting for a closed cluster's pods to go (upstream's `close(timeout=3600)`
/// waits for the resource; the garbage collector is quick, pods' grace periods are not).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(300);

/// The `DaskCluster` that `KubeCluster(..., deploy_mode="operator")` with `options` (JSON of
/// [`ClusterOptions`]) creates, with no cluster contacted, as JSON; in `namespace` when the
/// request leaves it to the credentials.
#[pyfunction]
#[pyo3(signature = (options, namespace="default"))]
pub fn render_dask_cluster(options: &str, namespace: &str) -> PyResult<String> {
    let options: ClusterOptions =
        serde_json::from_str(options).map_err(|e| json_err("KubeCluster arguments", e))?;
    let resolved = options
        .builder(None)
        .and_then(|b| b.resolve())
        .map_err(to_py_err)?;
    to_json(&resolved.dask_cluster(namespace).map_err(to_py_err)?)
}

/// Deletes a `DaskCluster` this start created when the start does not finish (fails, or
/// its awaitable is cancelled by Ctrl-C), on the runtime: nothing half-made stays.
struct DeleteUnlessDisarmed(Option<(ClusterApi, String)>);

impl Drop for DeleteUnlessDisarmed {
    fn drop(&mut self) {
        if let Some((api, name)) = self.0.take() {
            runtime().spawn(async move {
                if let Err(e) = delete_dask_cluster(&api, &name).await {
                    eprintln!(
                        "dask_kube: deleting DaskCluster {name} after a failed start failed: {e}"
                    );
                }
            });
        }
    }
}

/// Creates the `DaskCluster` of `options` (JSON of [`ClusterOptions`]) or connects to the
/// one of that name, as `create_mode` says (upstream's `CREATE_ONLY`, `CREATE_OR_CONNECT`,
/// `CONNECT_ONLY`), and waits until the operator made it and its scheduler answers.
/// Awaitable resolving to an [`OperatorNativeCluster`]. A cluster it created is deleted
/// again when the start fails or is cancelled.
#[pyfunction]
#[pyo3(signature = (options, create_mode, config=None))]
pub fn operator_start<'py>(
    py: Python<'py>,
    options: String,
    create_mode: &str,
    config: Option<Py<PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let options: ClusterOptions =
        serde_json::from_str(&options).map_err(|e| json_err("KubeCluster arguments", e))?;
    let mode: CreateMode = create_mode.parse().map_err(to_py_err)?;
    let source =
        config.map(|getter| -> Arc<dyn ConfigSource> { Arc::new(PythonConfig::new(getter)) });
    interpreter_exit::future_into_py(py, async move {
        let builder = options.builder(source).map_err(to_py_err)?;
        let (builder, api, name) = builder.pin().await.map_err(to_py_err)?;
        let resolved = builder.resolve().map_err(to_py_err)?;
        let resource = resolved.dask_cluster(api.namespace()).map_err(to_py_err)?;
        let start = OperatorClusterOptions {
            create_mode: mode,
            resource_timeout: resolved.scheduler_start_timeout,
            access: resolved.access,
            local_port: resolved.local_port,
            dashboard_port: resolved.dashboard_port,
            dashboard_link: resolved.dashboard_link.clone(),
            env: resolved.env.clone(),
        };
        let created = OperatorCluster::create_or_connect(&api, &name, Some(resource), mode)
            .await
            .map_err(to_py_err)?;
        let mut undo = DeleteUnlessDisarmed(created.then(|| (api.clone(), name.clone())));
        let cluster = OperatorCluster::reach(api, &name, &start, created)
            .await
            .map_err(to_py_err)?;
        undo.0 = None;
        Ok(OperatorNativeCluster::new(cluster))
    })
}

/// A cluster the operator runs, as Python's `KubeCluster` uses a native cluster.
#[pyclass(frozen, module = "dask_kube._native")]
pub struct OperatorNativeCluster {
    cluster: Arc<RwLock<Option<OperatorCluster>>>,
    #[pyo3(get)]
    name: String,
    #[pyo3(get)]
    namespace: String,
    #[pyo3(get)]
    scheduler_address: String,
    #[pyo3(get)]
    dashboard_link: String,
    /// Whether this client created the `DaskCluster` (else it connected to one): upstream's
    /// `shutdown_on_close` default.
    #[pyo3(get)]
    created: bool,
    /// JSON: `{"created": ..}`; no worker count is awaited (as upstream's client).
    #[pyo3(get)]
    start_report: String,
    /// JSON `{"mode": ..}`, as `NativeCluster.tls`: a DaskCluster carries no CA of its own
    /// (`ResolvedCluster::dask_cluster`), so a `tls://` scheduler is the templates' TLS.
    #[pyo3(get)]
    tls: String,
    worker_pod: String,
    adapting: Arc<AtomicBool>,
}

impl OperatorNativeCluster {
    fn new(cluster: OperatorCluster) -> Self {
        OperatorNativeCluster {
            name: cluster.name().to_owned(),
            namespace: cluster.namespace().to_owned(),
            scheduler_address: cluster.scheduler_address().to_owned(),
            dashboard_link: cluster.dashboard_link().to_owned(),
            created: cluster.created(),
            start_report: json!({"created": cluster.created()}).to_string(),
            tls: json!({"mode": if cluster.scheduler_address().starts_with("tls://") { "provided" } else { "off" }})
                .to_string(),
            worker_pod: cluster.worker_pod().to_string(),
            cluster: Arc::new(RwLock::new(Some(cluster))),
            adapting: Arc::default(),
        }
    }
}

fn closed(name: &str) -> PyErr {
    to_py_err(Error::Usage(format!("cluster {name} is closed")))
}

async fn close_cluster(cluster: Arc<RwLock<Option<OperatorCluster>>>) -> Result<String, Error> {
    let taken = cluster.write().await.take();
    let report = match taken {
        Some(c) => c.close(CLOSE_TIMEOUT).await?,
        None => dask_kube::CloseReport::default(),
    };
    serde_json::to_string(&report).map_err(|e| Error::Usage(e.to_string()))
}

#[pymethods]
impl OperatorNativeCluster {
    /// Sets worker group `worker_group`'s replicas to `n` (the operator creates workers, or
    /// retires them before deleting their pods); awaitable resolving to a report as JSON.
    /// `force` has no meaning here: the operator always retires.
    #[pyo3(signature = (n, force=false, worker_group="default"))]
    fn scale<'py>(
        &self,
        py: Python<'py>,
        n: u32,
        force: bool,
        worker_group: &str,
    ) -> PyResult<Bound<'py, PyAny>> {
        if force {
            return Err(to_py_err(Error::Usage(
                "scale(force=True) with deploy_mode='operator': the operator always retires workers before deleting them".into(),
            )));
        }
        let cluster = self.cluster.clone();
        let name = self.name.clone();
        let group = worker_group.to_owned();
        interpreter_exit::future_into_py(py, async move {
            let lock = cluster.read().await;
            let c = lock.as_ref().ok_or_else(|| closed(&name))?;
            let before = c.replicas(&group).await.map_err(to_py_err)?;
            c.scale(&group, n).await.map_err(to_py_err)?;
            to_json(&json!({
                "before": before, "target": n, "worker_group": group,
                "created": [], "retired": [], "deleted": [], "capped": null,
            }))
        })
    }

    /// Adapts the default group between `minimum` (default 0) and `maximum` (default no
    /// cap) workers: the cluster's `DaskAutoscaler`, which the operator follows with its own
    /// timing (`tuning` must be empty). Blocking, GIL released; JSON of the range in effect.
    #[pyo3(signature = (minimum=None, maximum=None, tuning="{}", in_cluster=true))]
    fn adapt(
        &self,
        py: Python<'_>,
        minimum: Option<u32>,
        maximum: Option<u32>,
        tuning: &str,
        in_cluster: bool,
    ) -> PyResult<String> {
        let tuning: Value =
            serde_json::from_str(tuning).map_err(|e| json_err("adapt arguments", e))?;
        if tuning.as_object().is_some_and(|t| !t.is_empty()) {
            return Err(to_py_err(Error::Usage(format!(
                "adapt({}) with deploy_mode='operator': the operator's DaskAutoscaler adapts with its own timing; pass minimum and maximum only",
                tuning
                    .as_object()
                    .map(|t| t.keys().cloned().collect::<Vec<_>>().join(", "))
                    .unwrap_or_default()
            ))));
        }
        if !in_cluster {
            return Err(to_py_err(Error::Usage(
                "adapt(in_cluster=False) with deploy_mode='operator': the operator adapts, in the cluster".into(),
            )));
        }
        let minimum = minimum.unwrap_or(0);
        let maximum = maximum.unwrap_or(u32::MAX).max(minimum);
        let cluster = self.cluster.clone();
        let name = self.name.clone();
        let adapting = self.adapting.clone();
        block_on(py, async move {
            let lock = cluster.read().await;
            let c = lock
                .as_ref()
                .ok_or_else(|| Error::Usage(format!("cluster {name} is closed")))?;
            c.adapt(minimum, maximum).await?;
            adapting.store(true, Ordering::Relaxed);
            Ok::<_, Error>(())
        })
        .map_err(to_py_err)?;
        to_json(&json!({
            "minimum": minimum, "maximum": maximum, "capped": null,
            "controller": format!("DaskAutoscaler {}", self.name),
            "controller_unavailable": null,
        }))
    }

    /// Stops adapting (deletes the `DaskAutoscaler`); awaitable.
    fn stop_adapting<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let cluster = self.cluster.clone();
        let adapting = self.adapting.clone();
        interpreter_exit::future_into_py(py, async move {
            let lock = cluster.read().await;
            if let Some(c) = lock.as_ref() {
                c.stop_adapting().await.map_err(to_py_err)?;
            }
            adapting.store(false, Ordering::Relaxed);
            Ok(())
        })
    }

    /// Whether this client started adapting and did not stop it.
    fn is_adapting(&self) -> bool {
        self.adapting.load(Ordering::Relaxed)
    }

    /// Adds worker group `<cluster>-<group>` of `n` workers: the default group's worker
    /// spec, or `worker` (JSON of a `DaskWorkerGroup`'s `spec.worker`); awaitable.
    #[pyo3(signature = (group, n, worker=None))]
    fn add_worker_group<'py>(
        &self,
        py: Python<'py>,
        group: String,
        n: u32,
        worker: Option<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let worker: Option<Value> = worker
            .map(|w| serde_json::from_str(&w).map_err(|e| json_err("worker group spec", e)))
            .transpose()?;
        let cluster = self.cluster.clone();
        let name = self.name.clone();
        interpreter_exit::future_into_py(py, async move {
            let lock = cluster.read().await;
            let c = lock.as_ref().ok_or_else(|| closed(&name))?;
            c.add_worker_group(&group, n, worker)
                .await
                .map_err(to_py_err)
        })
    }

    /// Deletes worker group `<cluster>-<group>`; awaitable.
    fn delete_worker_group<'py>(
        &self,
        py: Python<'py>,
        group: String,
    ) -> PyResult<Bound<'py, PyAny>> {
        let cluster = self.cluster.clone();
        let name = self.name.clone();
        interpreter_exit::future_into_py(py, async move {
            let lock = cluster.read().await;
            let c = lock.as_ref().ok_or_else(|| closed(&name))?;
            c.delete_worker_group(&group).await.map_err(to_py_err)
        })
    }

    /// The default group's worker pod (`{"spec": ...}`), as JSON.
    #[getter]
    fn worker_pod(&self) -> String {
        self.worker_pod.clone()
    }

    /// Worker pods of every group and their connection state; awaitable resolving to JSON.
    fn workers<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let cluster = self.cluster.clone();
        let name = self.name.clone();
        interpreter_exit::future_into_py(py, async move {
            let lock = cluster.read().await;
            let c = lock.as_ref().ok_or_else(|| closed(&name))?;
            to_json(&c.workers().await.map_err(to_py_err)?)
        })
    }

    /// Pod logs by pod name, the scheduler's under the cluster's name (where Python's
    /// `get_logs` finds a scheduler's); awaitable resolving to JSON.
    fn logs<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let cluster = self.cluster.clone();
        let name = self.name.clone();
        interpreter_exit::future_into_py(py, async move {
            let lock = cluster.read().await;
            let c = lock.as_ref().ok_or_else(|| closed(&name))?;
            let mut logs = c.logs().await.map_err(to_py_err)?;
            let scheduler_prefix = format!("{}-", dask_kube::service_name(&name));
            let scheduler: Vec<String> = logs
                .keys()
                .filter(|pod| pod.starts_with(&scheduler_prefix))
                .cloned()
                .collect();
            let mut text = String::new();
            for pod in scheduler {
                text.push_str(&logs.remove(&pod).unwrap_or_default());
            }
            logs.insert(name.clone(), text);
            to_json(&logs)
        })
    }

    /// Deletes the `DaskCluster` (the operator's objects go with it) and waits for its pods
    /// to go; awaitable resolving to the report as JSON.
    fn close<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let cluster = self.cluster.clone();
        interpreter_exit::future_into_py(py, async move {
            close_cluster(cluster).await.map_err(to_py_err)
        })
    }

    /// [`OperatorNativeCluster::close`], blocking with the GIL released.
    fn close_blocking(&self, py: Python<'_>) -> PyResult<String> {
        let cluster = self.cluster.clone();
        block_on(py, close_cluster(cluster)).map_err(to_py_err)
    }

    /// Stops the local listeners; the cluster (and its autoscaler) keeps running; awaitable.
    fn detach<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let cluster = self.cluster.clone();
        interpreter_exit::future_into_py(py, async move {
            if let Some(c) = cluster.write().await.take() {
                c.detach().await;
            }
            Ok(())
        })
    }

    /// [`OperatorNativeCluster::detach`], blocking with the GIL released.
    fn detach_blocking(&self, py: Python<'_>) {
        let cluster = self.cluster.clone();
        block_on(py, async move {
            if let Some(c) = cluster.write().await.take() {
                c.detach().await;
            }
        });
    }

    /// Nothing here undoes work in the background (scaling is one patch).
    fn wait_idle(&self) {}

    /// Whether the cluster was closed or detached.
    fn is_closed(&self) -> bool {
        self.cluster
            .try_read()
            .map(|c| c.is_none())
            .unwrap_or(false)
    }

    /// Progress messages: none (the operator reports on its resources' events).
    fn take_messages(&self) -> Vec<String> {
        Vec::new()
    }
}
