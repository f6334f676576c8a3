//! The pod side: the cluster's Secret mounted into the scheduler's and the workers'
//! containers, and Dask's own settings naming it, so `dask scheduler` and `dask worker` need
//! no flag and a template's command line stays the user's.

use super::certificates::{CA_KEY, CERT_KEY, KEY_KEY, secret_name};
use crate::manifests::set_env;
use serde_json::{Map, Value, json};

/// Where the Secret is mounted in the scheduler and worker containers.
pub const MOUNT_PATH: &str = "/etc/dask-kube/tls";
/// The pod volume of the Secret.
pub const VOLUME_NAME: &str = "dask-kube-tls";
/// `distributed.comm.require-encryption` as a variable.
pub const REQUIRE_ENCRYPTION_ENV: &str = "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION";
/// `distributed.comm.default-scheme` as a variable.
pub const DEFAULT_SCHEME_ENV: &str = "DASK_DISTRIBUTED__COMM__DEFAULT_SCHEME";
/// `distributed.comm.tls.ca-file` as a variable.
pub const CA_FILE_ENV: &str = "DASK_DISTRIBUTED__COMM__TLS__CA_FILE";
/// The prefix of `distributed.comm.tls.<role>.{cert,key}` as variables.
pub(super) const TLS_ENV_PREFIX: &str = "DASK_DISTRIBUTED__COMM__TLS__";

/// The environment that makes a scheduler or worker container use the mounted
/// certificates for every role it takes (a scheduler connects to workers, a worker to the
/// scheduler and to other workers, code on a worker may start a client), and refuse
/// plain `tcp://`: Dask's own configuration, so `dask scheduler` and `dask worker` need
/// no flag and the template's command line stays the user's.
pub fn pod_env() -> Vec<(String, String)> {
    let file = |key: &str| format!("{MOUNT_PATH}/{key}");
    let mut env = vec![
        (REQUIRE_ENCRYPTION_ENV.to_owned(), "True".to_owned()),
        // `dask scheduler` picks its listener's scheme from its flags only: without
        // `--protocol tls` (or a `--tls-*` flag) it would listen on `tcp://` and then
        // refuse itself ("encryption required"). The default scheme is the same setting
        // as configuration, so a template's own command line still works.
        (DEFAULT_SCHEME_ENV.to_owned(), "tls".to_owned()),
        (CA_FILE_ENV.to_owned(), file(CA_KEY)),
    ];
    for role in ["SCHEDULER", "WORKER", "CLIENT"] {
        env.push((format!("{TLS_ENV_PREFIX}{role}__CERT"), file(CERT_KEY)));
        env.push((format!("{TLS_ENV_PREFIX}{role}__KEY"), file(KEY_KEY)));
    }
    env
}

/// The pod volume of cluster `cluster`'s Secret.
pub fn pod_volume(cluster: &str) -> Value {
    json!({"name": VOLUME_NAME, "secret": {"secretName": secret_name(cluster)}})
}

/// The container's mount of [`pod_volume`].
pub fn volume_mount() -> Value {
    json!({"name": VOLUME_NAME, "mountPath": MOUNT_PATH, "readOnly": true})
}

/// The container side of the cluster's certificates: the read-only mount and Dask's TLS
/// settings (replacing the template's own values of those variables).
pub(crate) fn mount(container: &mut Map<String, Value>) {
    for (name, value) in pod_env() {
        set_env(container, &name, &value, true);
    }
    let mounts = container.entry("volumeMounts").or_insert_with(|| json!([]));
    if !mounts.is_array() {
        *mounts = json!([]);
    }
    if let Some(mounts) = mounts.as_array_mut() {
        mounts.retain(|m| m.get("name").and_then(Value::as_str) != Some(VOLUME_NAME));
        mounts.push(volume_mount());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pods_use_the_mounted_files_for_every_role_and_require_tls() {
        let env: std::collections::BTreeMap<_, _> = pod_env().into_iter().collect();
        assert_eq!(env[REQUIRE_ENCRYPTION_ENV], "True");
        assert_eq!(
            env[DEFAULT_SCHEME_ENV], "tls",
            "dask scheduler listens on tls://"
        );
        assert_eq!(env[CA_FILE_ENV], "/etc/dask-kube/tls/ca.crt");
        for role in ["SCHEDULER", "WORKER", "CLIENT"] {
            assert_eq!(
                env[&format!("DASK_DISTRIBUTED__COMM__TLS__{role}__CERT")],
                "/etc/dask-kube/tls/tls.crt"
            );
            assert_eq!(
                env[&format!("DASK_DISTRIBUTED__COMM__TLS__{role}__KEY")],
                "/etc/dask-kube/tls/tls.key"
            );
        }
    }
}
