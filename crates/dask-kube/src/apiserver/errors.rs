//! What an API error means: to the user (403 names the missing permission, a missing
//! namespace says so, an unreachable server names its URL), and to the caller (may it be
//! sent again, is the server away, was a create perhaps stored anyway).

use crate::flow::CallOutcome;
use crate::{Error, Result};
use std::time::Duration;

/// Where a call went, for errors about it.
#[derive(Debug, Clone)]
pub(crate) struct CallSite<'a> {
    /// Verb (`create`, `list`, ...).
    pub(crate) verb: &'a str,
    /// Resource (`pods`, `services`, `pods/log`).
    pub(crate) resource: &'a str,
    /// Namespace.
    pub(crate) namespace: &'a str,
    /// Server URL.
    pub(crate) url: &'a str,
}

/// A short description of an API error (`403 Forbidden: pods is forbidden: ...`).
pub(crate) fn describe_kube_error(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => {
            format!("{} {}: {}", status.code, status.reason, status.message)
        }
        other => other.to_string(),
    }
}

/// Whether a call may succeed when repeated: throttling, server errors, conflicts (a
/// `generateName` collision), and transport errors.
pub(crate) fn is_retryable(error: &kube::Error) -> bool {
    match error {
        kube::Error::Api(status) => {
            matches!(status.code, 409 | 429 | 500 | 502 | 503 | 504)
                || status.message.contains(PARAMS_NOT_SYNCED)
        }
        other => is_transport(other),
    }
}

/// How an API server that just started refuses a request while a ValidatingAdmissionPolicy
/// still loads its parameters (`deploy/rbac.yaml`'s worker-template policy): a refusal that
/// passes within about a second, not an answer about the pod.
const PARAMS_NOT_SYNCED: &str = "not yet synced to use for admission";

fn is_transport(error: &kube::Error) -> bool {
    matches!(error, kube::Error::HyperError(_) | kube::Error::Service(_))
}

/// Whether an error says the API server is away or shedding load (not that the request is
/// wrong): no connection, 503/504, 429. These are retried for the retry budget once the
/// server has answered; a 500 (a failing admission webhook, for one) is not an outage and
/// gets the attempts only.
pub(crate) fn is_outage(error: &kube::Error) -> bool {
    match error {
        kube::Error::Api(status) => matches!(status.code, 429 | 503 | 504),
        other => is_transport(other),
    }
}

/// Whether the API server could not call an admission webhook (`failed calling webhook`).
pub(crate) fn is_webhook_failure(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(s) if s.code == 500 && s.message.contains("failed calling webhook"))
}

/// Whether a failed create may nevertheless have created the pod: the answer was lost or
/// the server failed after it may have stored it. 429 and 409 are answers before storing.
pub(crate) fn ambiguous(error: &kube::Error) -> bool {
    match error {
        kube::Error::Api(s) => s.code >= 500,
        e => is_transport(e),
    }
}

/// The server's `retryAfterSeconds`, when it sent one.
pub(crate) fn retry_after(error: &kube::Error) -> Option<Duration> {
    match error {
        kube::Error::Api(s) => s
            .details
            .as_ref()
            .map(|d| Duration::from_secs(u64::from(d.retry_after_seconds)))
            .filter(|d| !d.is_zero()),
        _ => None,
    }
}

/// What a failed call says about the server's load, for flow control.
pub(crate) fn outcome_of(error: &kube::Error, latency: Duration) -> CallOutcome {
    match error {
        kube::Error::Api(s) if s.code == 429 => CallOutcome::Throttled {
            retry_after: retry_after(error),
        },
        kube::Error::Api(s) if s.code >= 500 => CallOutcome::Failed,
        e if is_transport(e) => CallOutcome::Failed,
        _ => CallOutcome::Done { latency },
    }
}

/// Whether an error fails every call of a batch alike (no permission, no namespace, no
/// server), so the batch stops instead of repeating it.
pub(crate) fn fails_every_call(error: &Error) -> bool {
    matches!(
        error,
        Error::Forbidden { .. } | Error::NamespaceNotFound(_) | Error::Unreachable { .. }
    )
}

/// Turns an API error into this crate's error, by what it means to the user.
pub(crate) fn map_kube_error(error: kube::Error, at: &CallSite<'_>) -> Error {
    let action = format!("{} {} in namespace {}", at.verb, at.resource, at.namespace);
    if let Some(forbidden) = forbidden(&error, at.verb, at.resource, at.namespace) {
        return forbidden;
    }
    if let kube::Error::Api(status) = &error {
        let about_namespace = status
            .details
            .as_ref()
            .is_some_and(|d| d.kind == "namespaces" && d.name == at.namespace);
        if status.code == 404 && about_namespace {
            return Error::NamespaceNotFound(at.namespace.to_owned());
        }
    }
    if is_transport(&error) {
        return Error::Unreachable {
            url: at.url.to_owned(),
            action,
            source: Box::new(error),
        };
    }
    Error::Kube {
        action,
        source: Box::new(error),
    }
}

/// A 403 as [`Error::Forbidden`], `None` for anything else. The server names what it
/// checked (an apply that creates checks `create`); `verb` and `resource` (the call's) are
/// the fallback. Also for calls without a [`CallSite`] (a port-forward upgrade).
pub(crate) fn forbidden(
    error: &kube::Error,
    verb: &str,
    resource: &str,
    namespace: &str,
) -> Option<Error> {
    let kube::Error::Api(status) = error else {
        return None;
    };
    if status.code != 403 {
        return None;
    }
    let (verb, resource) = forbidden_verb_resource(&status.message)
        .unwrap_or_else(|| (verb.to_owned(), resource.to_owned()));
    Some(Error::Forbidden {
        verb,
        resource,
        namespace: namespace.to_owned(),
        message: status.message.clone(),
    })
}

/// `(verb, resource)` from an RBAC message: `... cannot create resource "services" ...`
/// (with `/subresource` when the message names one).
fn forbidden_verb_resource(message: &str) -> Option<(String, String)> {
    let rest = message.split_once("cannot ")?.1;
    let (verb, rest) = rest.split_once(' ')?;
    let rest = rest.strip_prefix("resource \"")?;
    let (resource, rest) = rest.split_once('"')?;
    let resource = match rest
        .split_once("subresource \"")
        .and_then(|(_, r)| r.split_once('"'))
    {
        Some((sub, _)) => format!("{resource}/{sub}"),
        None => resource.to_owned(),
    };
    Some((verb.to_owned(), resource))
}

/// The error of a `kube::runtime` wait (its watcher's list or watch failed), mapped as any
/// other call's: a 403 names the verb the server checked (`list` for the first list,
/// `watch` after).
pub(crate) fn map_wait_error(error: kube::runtime::wait::Error, at: &CallSite<'_>) -> Error {
    let kube::runtime::wait::Error::ProbeFailed(watcher) = error;
    let error = match watcher {
        kube::runtime::watcher::Error::InitialListFailed(e)
        | kube::runtime::watcher::Error::WatchStartFailed(e)
        | kube::runtime::watcher::Error::WatchFailed(e) => e,
        other => kube::Error::Service(Box::new(other)),
    };
    map_kube_error(error, at)
}

/// A call's result mapped at `at`.
pub(crate) fn at<T>(result: Result<T, kube::Error>, site: &CallSite<'_>) -> Result<T> {
    result.map_err(|e| map_kube_error(e, site))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn api_error(code: u16, message: &str) -> kube::Error {
        kube::Error::Api(Box::new(
            kube::core::Status::failure(message, "x").with_code(code),
        ))
    }

    #[rstest]
    #[case::plain("services \"x\" is forbidden: User \"u\" cannot create resource \"services\" in API group \"\" in the namespace \"n\"", Some(("create", "services")))]
    #[case::subresource("pods \"x\" is forbidden: User \"u\" cannot create resource \"pods/portforward\" in API group \"\"", Some(("create", "pods/portforward")))]
    #[case::named_subresource("User \"u\" cannot get resource \"pods\" in API group \"\" with subresource \"log\"", Some(("get", "pods/log")))]
    #[case::other("something else", None)]
    fn reads_the_verb_rbac_checked(#[case] message: &str, #[case] expected: Option<(&str, &str)>) {
        assert_eq!(
            forbidden_verb_resource(message),
            expected.map(|(v, r)| (v.to_owned(), r.to_owned()))
        );
    }

    #[rstest]
    #[case::portforward_rbac(403, "pods \"s\" is forbidden: User \"u\" cannot get resource \"pods/portforward\" in API group \"\" in the namespace \"team\"", Some(("get", "pods/portforward", "team")))]
    #[case::unparsed_403_keeps_the_call(403, "forbidden by a webhook", Some(("create", "pods/portforward", "team")))]
    #[case::not_403(404, "pods \"s\" not found", None)]
    fn a_port_forward_403_names_the_permission(
        #[case] code: u16,
        #[case] message: &str,
        #[case] expected: Option<(&str, &str, &str)>,
    ) {
        let got = forbidden(
            &api_error(code, message),
            "create",
            "pods/portforward",
            "team",
        )
        .map(|e| match e {
            Error::Forbidden {
                verb,
                resource,
                namespace,
                ..
            } => (verb, resource, namespace),
            other => panic!("{other}"),
        });
        assert_eq!(
            got,
            expected.map(|(v, r, n)| (v.to_owned(), r.to_owned(), n.to_owned()))
        );
    }

    #[rstest]
    #[case::throttled(429, "slow down", true, false)]
    #[case::unavailable(503, "apiserver is shutting down", true, false)]
    #[case::gateway_timeout(504, "timeout", true, false)]
    #[case::server_error_is_an_answer(500, "boom", false, false)]
    #[case::webhook_down(
        500,
        "Internal error occurred: failed calling webhook \"w.dask.org\": connection refused",
        false,
        true
    )]
    #[case::conflict(409, "exists", false, false)]
    fn what_a_failure_says_about_the_server(
        #[case] code: u16,
        #[case] message: &str,
        #[case] outage: bool,
        #[case] webhook: bool,
    ) {
        let error = api_error(code, message);
        assert_eq!(is_outage(&error), outage);
        assert_eq!(is_webhook_failure(&error), webhook);
    }

    #[rstest]
    #[case::conflict(409, true)]
    #[case::throttled(429, true)]
    #[case::server_error(500, true)]
    #[case::unavailable(503, true)]
    #[case::bad_request(400, false)]
    #[case::forbidden(403, false)]
    #[case::not_found(404, false)]
    #[case::invalid(422, false)]
    fn retryable_errors(#[case] code: u16, #[case] retryable: bool) {
        assert_eq!(is_retryable(&api_error(code, "x")), retryable, "{code}");
    }

    /// The worker-template policy's parameters still loading after an API server start is
    /// retried; the policy's real refusals are not.
    #[rstest]
    #[case::params_loading(
        422,
        "ValidatingAdmissionPolicy 'dask-kube-controller-template' with binding 'dask-kube-controller-template' denied request: failed to configure binding: paramKind kind `/v1, Kind=PodTemplate` not yet synced to use for admission",
        true
    )]
    #[case::a_refusal(
        403,
        "ValidatingAdmissionPolicy 'dask-kube-controller-template' with binding 'dask-kube-controller-template' denied request: the pod runs as ServiceAccount dask-kube",
        false
    )]
    fn an_admission_policy_still_loading_is_retried(
        #[case] code: u16,
        #[case] message: &str,
        #[case] retryable: bool,
    ) {
        assert_eq!(is_retryable(&api_error(code, message)), retryable);
    }
}
