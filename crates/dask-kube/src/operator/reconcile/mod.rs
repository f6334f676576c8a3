//! What to do for each resource, as pure functions of the resource and what is observed of
//! the objects it owns: a [`Plan`] of [`Action`]s that [`crate::operator::apply`] carries out. Nothing
//! here talks to the API, the scheduler or the clock; every planner is table-tested.
//!
//! Level-based where upstream is edge-triggered: kopf runs a handler when a field changes,
//! and a change missed while the operator was down (a worker pod deleted, a scheduler
//! Deployment removed) is never acted on (dask-kubernetes #603, #606). Here each reconcile
//! compares what should exist with what does, so a restart, a missed event or anyone's
//! `kubectl delete` converge the same way.

mod autoscaler;
mod cluster;
mod job;
mod worker_group;

pub use autoscaler::{AdaptMemory, AutoscalerView, plan_autoscaler, target_group};
pub use cluster::{ClusterView, ServiceState, idle_expired, plan_cluster};
pub use job::{JobView, plan_job};
pub use worker_group::{WorkerGroupView, plan_worker_group, scheduler_needed};

use crate::RetireTarget;
use crate::operator::manifests::WorkerPods;
use serde_json::Value;
use std::time::Duration;

/// An event on the reconciled object. Upstream's kopf posts every log line of a handler as
/// an Event with reason `Logging`; the messages here are upstream's log lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// A warning (else a normal event).
    pub warning: bool,
    /// The message.
    pub message: String,
}

impl Note {
    pub(crate) fn info(message: impl Into<String>) -> Action {
        Action::Note(Note {
            warning: false,
            message: message.into(),
        })
    }

    pub(crate) fn warn(message: impl Into<String>) -> Action {
        Action::Note(Note {
            warning: true,
            message: message.into(),
        })
    }
}

/// One step of a plan, in the order given.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Create this object (a Deployment, Service, Pod, DaskWorkerGroup or DaskCluster built
    /// by [`crate::operator::manifests`]); one that already exists counts as created.
    Create(Value),
    /// Create these worker pods, each rendered as the batch sends it (one that already
    /// exists counts as created).
    CreateWorkerPods(Box<WorkerPods>),
    /// Delete this pod (gone already counts as deleted); with a `resourceVersion`, only if
    /// the pod is unchanged since (a delete that rests on the pod's listed state: a
    /// container that started meanwhile may hold a worker).
    DeletePod {
        /// The pod.
        pod: String,
        /// The `resourceVersion` it must still have.
        unchanged_since: Option<String>,
    },
    /// Remove dask-kube's scheduling gate from this worker pod so it may start (a JSON patch
    /// that first tests the pod's gates are still those listed; a pod gone or changed since
    /// is left for the next look).
    ReleasePod {
        /// The pod.
        pod: String,
        /// The JSON patch ([`crate::release_start_patch`]).
        patch: Value,
    },
    /// Delete this DaskCluster (gone already counts as deleted).
    DeleteCluster(String),
    /// Merge-patch the reconciled object's status (an ordinary patch for DaskCluster, whose
    /// CRD has no status subresource; the `/status` subresource for DaskJob).
    PatchStatus(Value),
    /// Merge-patch the reconciled object itself (metadata, spec).
    PatchSelf(Value),
    /// Merge-patch a DaskWorkerGroup of the same namespace.
    PatchWorkerGroup {
        /// Its name.
        name: String,
        /// The merge patch.
        patch: Value,
    },
    /// Retire these workers through the scheduler, then delete the pods whose workers the
    /// scheduler confirms retired (their data moved to other workers first) and in which a
    /// fresh look finds no worker (dask-kube's `retired_pods_to_delete`).
    RetireThenDelete {
        /// The cluster whose scheduler retires them.
        cluster: String,
        /// The group whose pods they are (`dask.org/workergroup-name`), for the fresh look
        /// at its pods after the scheduler's answer.
        group: String,
        /// The pods and their workers' addresses.
        targets: Vec<RetireTarget>,
    },
    /// Post an event on the reconciled object.
    Note(Note),
}

/// What one reconcile does, and when to look again regardless of events.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// The actions, in order.
    pub actions: Vec<Action>,
    /// Look again after this long (timers: idle checks, the autoscaler, waiting on
    /// something no watch reports).
    pub requeue_after: Option<Duration>,
}

/// The period of upstream's kopf timers (the autoscaler and the idle check).
pub const TIMER_PERIOD: Duration = Duration::from_secs(5);

/// The patch that makes `cluster` an owner of `object` (an autoscaler or a worker group it
/// names), as upstream adopts them, so the garbage collector deletes them with the cluster;
/// `None` when it already is. The cluster is the controller only if no one else is.
pub(crate) fn adoption<K: kube::Resource>(
    object: &K,
    cluster: &crate::operator::resources::DaskCluster,
) -> crate::Result<Option<Action>> {
    use kube::ResourceExt;
    let refs = object.owner_references();
    if refs.iter().any(|o| Some(&o.uid) == cluster.uid().as_ref()) {
        return Ok(None);
    }
    let mut refs = refs.to_vec();
    let mut owner = crate::operator::manifests::owner_ref(cluster)?;
    owner.controller = Some(!refs.iter().any(|r| r.controller == Some(true)));
    refs.push(owner);
    Ok(Some(Action::PatchSelf(
        serde_json::json!({"metadata": {"ownerReferences": refs}}),
    )))
}
