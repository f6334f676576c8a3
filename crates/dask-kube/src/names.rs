//! Cluster names: the `dask-{user}-{uuid}` name template of dask-kubernetes, formatted with
//! the user, a short uuid and every environment variable, then escaped to a name that is
//! valid for the scheduler pod, its Service and the worker pods' `generateName`.

use crate::pyformat::{self, FormatError};
use crate::{Error, Result};
use std::collections::BTreeMap;

/// The default name template, as in dask-kubernetes.
pub const DEFAULT_NAME_TEMPLATE: &str = "dask-{user}-{uuid}";

/// Longest cluster name. The Service is named after the cluster and must be a DNS-1035
/// label (63), and worker pods are `<name>-worker-<5 random>`: 50 keeps those within 63
/// too, so a worker's pod name is also a valid hostname and label value.
pub const MAX_CLUSTER_NAME_LEN: usize = 50;

/// Suffix of worker pods' `generateName`.
pub const WORKER_NAME_INFIX: &str = "-worker-";

/// Characters of the uuid in `{uuid}` (dask-kubernetes uses the first 10 of a uuid4).
pub const UUID_LEN: usize = 10;

/// What a name template is formatted with.
#[derive(Debug, Clone, Default)]
pub struct NameVars {
    /// The user (escaped before use).
    pub user: String,
    /// The short uuid.
    pub uuid: String,
    /// Environment variables.
    pub env: BTreeMap<String, String>,
}

impl NameVars {
    /// The current user, a fresh uuid and the process environment.
    pub fn from_environment() -> Self {
        let env: BTreeMap<String, String> = std::env::vars().collect();
        let user = env
            .get("USER")
            .or_else(|| env.get("LOGNAME"))
            .cloned()
            .or_else(|| {
                nix::unistd::User::from_uid(nix::unistd::getuid())
                    .ok()
                    .flatten()
                    .map(|u| u.name)
            })
            .unwrap_or_default();
        NameVars {
            user,
            uuid: short_uuid(),
            env,
        }
    }
}

/// The first [`UUID_LEN`] characters of a random uuid4.
pub fn short_uuid() -> String {
    uuid::Uuid::new_v4()
        .simple()
        .to_string()
        .chars()
        .take(UUID_LEN)
        .collect()
}

/// Escapes text to `[a-z0-9-]`: lowercase, other characters become `-`, runs of `-` are
/// collapsed and none is left at either end. Used for the `user` label and inside names.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars().flat_map(char::to_lowercase) {
        let c = if c.is_ascii_lowercase() || c.is_ascii_digit() {
            c
        } else {
            '-'
        };
        if c == '-' && (out.is_empty() || out.ends_with('-')) {
            continue;
        }
        out.push(c);
    }
    while out.ends_with('-') {
        out.pop();
    }
    out
}

/// The `user` label value: the escaped user, at most 63 characters, `unknown` when nothing
/// is left.
pub fn user_label(user: &str) -> String {
    let mut escaped = escape(user);
    escaped.truncate(63);
    while escaped.ends_with('-') {
        escaped.pop();
    }
    if escaped.is_empty() {
        "unknown".to_owned()
    } else {
        escaped
    }
}

/// Formats a name template and escapes the result into a valid cluster name.
pub fn cluster_name(template: &str, vars: &NameVars) -> Result<String> {
    let invalid = |reason: String| Error::InvalidNameTemplate {
        template: template.to_owned(),
        reason,
    };
    let user = user_label(&vars.user);
    let formatted = pyformat::format(template, "user, uuid", |field| match field {
        "user" => Some(user.clone()),
        "uuid" => Some(vars.uuid.clone()),
        other => vars.env.get(other).cloned(),
    })
    .map_err(|e: FormatError| invalid(e.to_string()))?;
    let mut name = escape(&formatted);
    // A DNS-1035 label starts with a letter.
    let start = name
        .find(|c: char| c.is_ascii_lowercase())
        .unwrap_or(name.len());
    name.drain(..start);
    if name.len() > MAX_CLUSTER_NAME_LEN {
        // Keep the end: `{uuid}` usually is last and is what makes the name unique.
        let cut = name.len() - MAX_CLUSTER_NAME_LEN;
        let tail = name.split_off(cut);
        name = tail;
        let start = name
            .find(|c: char| c.is_ascii_lowercase())
            .unwrap_or(name.len());
        name.drain(..start);
    }
    while name.ends_with('-') {
        name.pop();
    }
    if name.is_empty() {
        return Err(invalid(format!(
            "it formats to {formatted:?}, which has no letter to start a name with"
        )));
    }
    Ok(name)
}

/// Checks a cluster name given on the command line (`dask-kube scale NAME`).
pub fn validate_cluster_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidClusterName(name.to_owned()))
    }
}

/// The pod name a Dask worker name refers to: the pod itself, or for `--nworkers k` pods,
/// whose workers dask names `<pod>-0` .. `<pod>-{k-1}`, the pod without that suffix.
pub fn pod_of_worker<'a>(worker: &str, pods: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let mut prefix_match = None;
    for pod in pods {
        if pod == worker {
            return Some(pod);
        }
        if let Some(rest) = worker.strip_prefix(pod).and_then(|r| r.strip_prefix('-'))
            && !rest.is_empty()
            && rest.chars().all(|c| c.is_ascii_digit())
        {
            prefix_match = Some(pod);
        }
    }
    prefix_match
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn vars(user: &str) -> NameVars {
        NameVars {
            user: user.into(),
            uuid: "0a1b2c3d4e".into(),
            env: BTreeMap::from([
                ("TEAM".to_owned(), "Data_Science".to_owned()),
                ("EMPTY".to_owned(), String::new()),
            ]),
        }
    }

    #[rstest]
    #[case::default_template(DEFAULT_NAME_TEMPLATE, "alice", "dask-alice-0a1b2c3d4e")]
    #[case::user_is_escaped(DEFAULT_NAME_TEMPLATE, "Jane.Doe", "dask-jane-doe-0a1b2c3d4e")]
    #[case::env_var_field("{TEAM}-{uuid}", "alice", "data-science-0a1b2c3d4e")]
    #[case::leading_digits_dropped("{uuid}-x", "alice", "a1b2c3d4e-x")]
    #[case::empty_user_is_unknown("dask-{user}", "", "dask-unknown")]
    #[case::no_placeholders("my-cluster", "alice", "my-cluster")]
    #[case::uppercase_literal("Dask_Prod", "alice", "dask-prod")]
    fn formats_names(#[case] template: &str, #[case] user: &str, #[case] expected: &str) {
        assert_eq!(cluster_name(template, &vars(user)).unwrap(), expected);
    }

    #[test]
    fn long_names_keep_their_unique_end() {
        let name = cluster_name(&format!("{}-{{uuid}}", "x".repeat(80)), &vars("a")).unwrap();
        assert!(name.len() <= MAX_CLUSTER_NAME_LEN);
        assert!(name.ends_with("-0a1b2c3d4e"), "{name}");
        assert!(name.starts_with('x'));
    }

    #[rstest]
    #[case::unknown_field("dask-{nope}", "unknown field {nope}")]
    #[case::unclosed("dask-{user", "unclosed")]
    #[case::nothing_left("{EMPTY}--123", "no letter")]
    fn refuses_bad_templates(#[case] template: &str, #[case] needle: &str) {
        let err = cluster_name(template, &vars("alice"))
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle), "{err}");
        assert!(err.contains(template), "{err}");
    }

    #[rstest]
    #[case::exact("dask-a-worker-x7k2p", Some("dask-a-worker-x7k2p"))]
    #[case::nworkers_suffix("dask-a-worker-x7k2p-1", Some("dask-a-worker-x7k2p"))]
    #[case::unknown("other-0", None)]
    #[case::non_numeric_suffix("dask-a-worker-x7k2p-abc", None)]
    fn maps_worker_names_to_pods(#[case] worker: &str, #[case] expected: Option<&str>) {
        let pods = ["dask-a-worker-x7k2p", "dask-a-worker-q9z1m"];
        assert_eq!(pod_of_worker(worker, pods), expected);
    }

    #[rstest]
    #[case::ok("dask-alice-0a1b", true)]
    #[case::uppercase("Dask", false)]
    #[case::leading_digit("1dask", false)]
    #[case::trailing_dash("dask-", false)]
    #[case::empty("", false)]
    fn validates_cluster_names(#[case] name: &str, #[case] ok: bool) {
        assert_eq!(validate_cluster_name(name).is_ok(), ok);
    }

    #[rstest]
    #[case::plain("alice", "alice")]
    #[case::symbols("A.B@c_d", "a-b-c-d")]
    #[case::all_symbols("@@@", "unknown")]
    fn user_labels(#[case] user: &str, #[case] expected: &str) {
        assert_eq!(user_label(user), expected);
    }

    /// What the item's documentation shows.
    #[test]
    fn escaping_example() {
        assert_eq!(escape("Jane.Doe@EXAMPLE"), "jane-doe-example");
    }

    /// What the item's documentation shows.
    #[test]
    fn cluster_name_example() {
        let vars = NameVars {
            user: "Alice".into(),
            uuid: "3f2a9c81b0".into(),
            ..Default::default()
        };
        assert_eq!(
            cluster_name("dask-{user}-{uuid}", &vars).unwrap(),
            "dask-alice-3f2a9c81b0"
        );
    }
}
