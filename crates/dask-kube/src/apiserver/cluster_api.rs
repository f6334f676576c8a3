//! [`ClusterApi`]: the pod and Service calls of one namespace, each retried
//! ([`super::retry`]) and its errors mapped to what they mean ([`super::errors`]). Batches
//! of creations and deletions are in [`super::create`] and [`super::delete`].

use super::batch::CreateLimits;
use super::connection::KubeConnection;
use super::errors::{CallSite, at, map_wait_error};
use super::lean::list_lean;
use super::retry::with_retry;
use crate::flow::FlowLimiter;
use crate::{Error, Result};
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, DeleteParams, LogParams, Patch, PatchParams};
use kube::runtime::wait::{Condition, await_condition};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;
use tokio::time::Instant;
use tracing::warn;

/// Field manager of the objects dask-kube applies.
pub(crate) const FIELD_MANAGER: &str = "dask-kube";
/// Field manager of the supervisor's annotations (applying nothing removes them).
const SUPERVISOR_FIELD_MANAGER: &str = "dask-kube-supervisor";
/// Time between checks while waiting for pods to go.
const GONE_POLL: Duration = Duration::from_millis(250);

/// Pod and Service calls in one namespace.
///
/// # Example
/// ```no_run
/// # async fn f() -> dask_kube::Result<()> {
/// use dask_kube::{ClusterApi, Credentials, KubeConnection};
/// let api = ClusterApi::new(KubeConnection::open(&Credentials::Default).await?.in_namespace("dask"));
/// for pod in api.list_pods("dask.org/cluster-name=dask-ada-0a1b2c3d4e").await? {
///     println!("{:?}", pod.metadata.name);
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ClusterApi {
    pub(super) connection: KubeConnection,
    pub(super) limits: CreateLimits,
    /// Flow control shared with other APIs' batches (one API server, many namespaces);
    /// `None`: each batch starts its own at `limits`.
    pub(super) shared_flow: Option<FlowLimiter>,
    /// Whether the server has answered a call of this API (then an outage is waited out).
    pub(super) answered: Arc<AtomicBool>,
}

impl ClusterApi {
    /// Calls in the connection's namespace.
    pub fn new(connection: KubeConnection) -> Self {
        ClusterApi {
            connection,
            limits: CreateLimits::default(),
            shared_flow: None,
            answered: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Paces this API's batches of creations and deletions.
    #[must_use]
    pub fn with_limits(mut self, limits: CreateLimits) -> Self {
        self.limits = limits;
        self
    }

    /// How batches are paced.
    pub fn limits(&self) -> CreateLimits {
        self.limits
    }

    /// Runs this API's batches under `flow`, shared with every other API given it: a
    /// process that acts in many namespaces at once (an operator) keeps one picture of
    /// the API server's load instead of one per batch, so concurrent batches back off
    /// together on its 429s and slow answers. `limits` still caps each batch.
    ///
    /// # Example
    /// ```no_run
    /// # async fn f() -> dask_kube::Result<()> {
    /// use dask_kube::*;
    /// let connection = KubeConnection::open(&Credentials::Default).await?;
    /// let flow = FlowLimiter::new(FlowControl::new(DEFAULT_INITIAL_IN_FLIGHT, DEFAULT_MAX_IN_FLIGHT));
    /// let team_a = ClusterApi::new(connection.clone().in_namespace("a")).with_shared_flow(flow.clone());
    /// let team_b = ClusterApi::new(connection.in_namespace("b")).with_shared_flow(flow);
    /// # let _ = (team_a, team_b); Ok(()) }
    /// ```
    #[must_use]
    pub fn with_shared_flow(mut self, flow: FlowLimiter) -> Self {
        self.shared_flow = Some(flow);
        self
    }

    /// The flow control of the next batch: the shared one, else a new one at `limits`.
    pub(super) fn batch_flow(&self) -> FlowLimiter {
        self.shared_flow
            .clone()
            .unwrap_or_else(|| self.limits.limiter())
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.connection.namespace
    }

    /// The connection (client, namespace, server).
    pub fn connection(&self) -> &KubeConnection {
        &self.connection
    }

    /// The pods API of the namespace.
    pub fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.connection.client.clone(), self.namespace())
    }

    fn services(&self) -> Api<Service> {
        Api::namespaced(self.connection.client.clone(), self.namespace())
    }

    pub(super) fn at<'a>(&'a self, verb: &'a str, resource: &'a str) -> CallSite<'a> {
        CallSite {
            verb,
            resource,
            namespace: self.namespace(),
            url: &self.connection.server_url,
        }
    }

    /// Lists pods matching a label selector, lean: only the metadata and status fields
    /// dask-kube reads (no spec, no managedFields), a page at a time, so listing thousands of
    /// pods takes little memory.
    pub async fn list_pods(&self, selector: &str) -> Result<Vec<Pod>> {
        let pods = list_lean(
            &self.connection.client,
            &self.answered,
            Some(self.namespace()),
            selector,
        )
        .await;
        at(pods, &self.at("list", "pods"))
    }

    /// Lists pods matching a label selector in every namespace (lean, as [`Self::list_pods`]).
    pub async fn list_pods_all_namespaces(&self, selector: &str) -> Result<Vec<Pod>> {
        let pods = list_lean(&self.connection.client, &self.answered, None, selector).await;
        at(
            pods,
            &CallSite {
                verb: "list",
                resource: "pods",
                namespace: "(all namespaces)",
                url: &self.connection.server_url,
            },
        )
    }

    /// Gets a pod; `None` when it does not exist.
    pub async fn get_pod(&self, name: &str) -> Result<Option<Pod>> {
        let pods = self.pods();
        let got = with_retry("get pod", &self.answered, || pods.get_opt(name)).await;
        at(got, &self.at("get", "pods"))
    }

    /// Creates an object the scheduler pod owns (the cluster's TLS Secret, its stored
    /// worker template). One already there with the same owner is this one, from an
    /// attempt whose answer was lost: the retry's 409 is not a failure.
    pub async fn create_owned<K>(&self, object: &K, owner_uid: &str) -> Result<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + std::fmt::Debug
            + serde::de::DeserializeOwned
            + serde::Serialize,
    {
        let plural = K::plural(&());
        let name = object.meta().name.clone().unwrap_or_default();
        let objects: Api<K> = Api::namespaced(self.connection.client.clone(), self.namespace());
        let params = kube::api::PostParams::default();
        let created =
            with_retry("create", &self.answered, || objects.create(&params, object)).await;
        match created {
            Err(kube::Error::Api(s)) if s.code == 409 => {
                let found = with_retry("get", &self.answered, || objects.get_opt(&name)).await;
                let found = at(found, &self.at("get", &plural))?;
                let ours = found.as_ref().is_some_and(|o| {
                    o.meta()
                        .owner_references
                        .iter()
                        .flatten()
                        .any(|r| r.uid == owner_uid)
                });
                match found {
                    Some(o) if ours => Ok(o),
                    _ => Err(Error::Usage(format!(
                        "{plural} {name} already exists in namespace {} and belongs to another cluster",
                        self.namespace()
                    ))),
                }
            }
            other => at(other, &self.at("create", &plural)),
        }
    }

    /// Gets a namespaced object by name; `None` when it does not exist.
    pub async fn get_object<K>(&self, name: &str) -> Result<Option<K>>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + std::fmt::Debug
            + serde::de::DeserializeOwned,
    {
        let plural = K::plural(&());
        let objects: Api<K> = Api::namespaced(self.connection.client.clone(), self.namespace());
        let got = with_retry("get", &self.answered, || objects.get_opt(name)).await;
        at(got, &self.at("get", &plural))
    }

    /// Creates or updates the Service by server-side apply.
    pub async fn apply_service(&self, service: &Service) -> Result<Service> {
        let name = service.metadata.name.clone().unwrap_or_default();
        let services = self.services();
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let patch = Patch::Apply(service);
        let applied = with_retry("apply service", &self.answered, || {
            services.patch(&name, &params, &patch)
        })
        .await;
        at(applied, &self.at("patch", "services"))
    }

    /// Gets a Service; `None` when it does not exist.
    pub async fn get_service(&self, name: &str) -> Result<Option<Service>> {
        let services = self.services();
        let got = with_retry("get service", &self.answered, || services.get_opt(name)).await;
        at(got, &self.at("get", "services"))
    }

    /// Deletes the Service; gone already is fine.
    pub async fn delete_service(&self, name: &str) -> Result<()> {
        let services = self.services();
        let params = DeleteParams::background();
        match with_retry("delete service", &self.answered, || {
            services.delete(name, &params)
        })
        .await
        {
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            other => at(other, &self.at("delete", "services")).map(|_| ()),
        }
    }

    /// Sets the supervisor's annotations on the scheduler pod by server-side apply; an
    /// empty map removes the ones it set before.
    pub async fn apply_supervisor_annotations(
        &self,
        pod: &str,
        annotations: &BTreeMap<String, String>,
    ) -> Result<()> {
        let patch = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": pod, "annotations": annotations},
        });
        let pods = self.pods();
        let params = PatchParams::apply(SUPERVISOR_FIELD_MANAGER).force();
        let patch = Patch::Apply(&patch);
        let applied = with_retry("annotate pod", &self.answered, || {
            pods.patch(pod, &params, &patch)
        })
        .await;
        at(applied, &self.at("patch", "pods")).map(|_| ())
    }

    /// A pod's logs (all containers' first, or `container`).
    pub async fn logs(&self, pod: &str, container: Option<&str>) -> Result<String> {
        let pods = self.pods();
        let params = LogParams {
            container: container.map(str::to_owned),
            ..LogParams::default()
        };
        let logs = with_retry("read logs", &self.answered, || pods.logs(pod, &params)).await;
        at(logs, &self.at("get", "pods/log"))
    }

    /// Follows the log of `pod`'s only container from its start until a line satisfies
    /// `is_wanted` (true) or the log ends (false: the container exited). One streaming
    /// request, however long it takes, instead of asking again and again.
    pub async fn follow_log_until(
        &self,
        pod: &str,
        is_wanted: impl Fn(&str) -> bool,
    ) -> Result<bool> {
        use futures::{AsyncBufReadExt, TryStreamExt};
        let params = LogParams {
            follow: true,
            ..LogParams::default()
        };
        let stream = at(
            self.pods().log_stream(pod, &params).await,
            &self.at("get", "pods/log"),
        )?;
        let mut lines = std::pin::pin!(stream.lines());
        while let Some(line) = lines.try_next().await.map_err(|source| Error::Io {
            context: format!("reading the log of pod {pod}"),
            source,
        })? {
            if is_wanted(&line) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Waits until `cond` holds for pod `name`, at most `timeout`.
    pub async fn wait_pod(
        &self,
        name: &str,
        what: &str,
        timeout: Duration,
        cond: impl Condition<Pod>,
    ) -> Result<Option<Pod>> {
        match tokio::time::timeout(timeout, await_condition(self.pods(), name, cond)).await {
            Ok(Ok(pod)) => Ok(pod),
            Ok(Err(e)) => Err(map_wait_error(e, &self.at("watch", "pods"))),
            Err(_) => Err(Error::Timeout {
                what: what.to_owned(),
                seconds: timeout.as_secs(),
            }),
        }
    }

    /// Waits until every pod in `names` is gone, at most `timeout` in total; returns those
    /// still there. One lean list per check of the pods matching `selector` (the cluster's
    /// label), however many pods are awaited.
    pub async fn wait_pods_gone(
        &self,
        selector: &str,
        names: &[String],
        timeout: Duration,
    ) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut left: BTreeSet<String> = names.iter().cloned().collect();
        loop {
            if left.is_empty() {
                return Vec::new();
            }
            match self.list_pods(selector).await {
                Ok(pods) => {
                    let present: BTreeSet<String> =
                        pods.into_iter().filter_map(|p| p.metadata.name).collect();
                    left.retain(|n| present.contains(n));
                    if left.is_empty() {
                        return Vec::new();
                    }
                }
                // Waiting cannot grant a permission: report them as not seen gone now.
                Err(e @ Error::Forbidden { .. }) => {
                    warn!(error = %e, "cannot check which pods are gone");
                    return left.into_iter().collect();
                }
                Err(e) => warn!(error = %e, "cannot check which pods are gone"),
            }
            if Instant::now() >= deadline {
                for name in &left {
                    warn!(pod = %name, "pod still present");
                }
                return left.into_iter().collect();
            }
            tokio::time::sleep(GONE_POLL).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::mock::{api, body_json, ok_json, status};
    use super::*;

    /// Without `list pods` nothing can be seen gone, and waiting will not change that: the
    /// wait returns at once (it waited out its whole timeout before, 2 minutes in `up`'s
    /// cleanup) with every pod reported as not seen gone.
    #[tokio::test]
    async fn waiting_for_pods_to_go_stops_at_a_forbidden_list() {
        let (api, mut handle) = api("team");
        let server = tokio::spawn(async move {
            let (request, send) = handle
                .next_request()
                .await
                .unwrap_or_else(|| panic!("no request"));
            assert_eq!(request.method(), http::Method::GET);
            send.send_response(status(403, "Forbidden", "pods is forbidden: User \"system:serviceaccount:team:x\" cannot list resource \"pods\"", json!({"kind": "pods"})));
            handle
        });
        let names = vec!["a".to_owned(), "b".to_owned()];
        let left = tokio::time::timeout(
            Duration::from_secs(30),
            api.wait_pods_gone("dask.org/cluster-name=c", &names, Duration::from_secs(3600)),
        )
        .await
        .unwrap_or_else(|_| panic!("returns at the first forbidden list, not after its timeout"));
        let _handle = server.await;
        assert_eq!(left, names);
    }

    #[tokio::test]
    async fn service_is_server_side_applied_with_the_field_manager() {
        let (api, mut handle) = api("team");
        let server = tokio::spawn(async move {
            let (request, send) = handle
                .next_request()
                .await
                .unwrap_or_else(|| panic!("no request"));
            assert_eq!(request.method(), http::Method::PATCH);
            assert_eq!(request.uri().path(), "/api/v1/namespaces/team/services/c");
            let query = request.uri().query().unwrap_or_default().to_owned();
            assert!(query.contains("fieldManager=dask-kube"), "{query}");
            assert!(query.contains("force=true"), "{query}");
            assert_eq!(
                request.headers()["content-type"],
                "application/apply-patch+yaml"
            );
            let body = body_json(request).await;
            send.send_response(ok_json(body));
        });
        let svc: Service = serde_json::from_value(
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "c"}}),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        tokio::time::timeout(Duration::from_secs(10), api.apply_service(&svc))
            .await
            .unwrap_or_else(|_| panic!("timed out"))
            .unwrap_or_else(|e| panic!("{e}"));
        server.await.unwrap_or_else(|e| panic!("{e}"));
    }
}
