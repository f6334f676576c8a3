//! TLS between a cluster's client, scheduler and workers, as Dask does it
//! (`distributed.security.Security`): a certificate authority made for one cluster, whose
//! key is thrown away once it signed the cluster's one certificate, so nothing else can ever
//! join that cluster. The scheduler, the workers and the client all present that certificate
//! (Dask's TLS does not tell roles apart: any certificate its CA signed may take any role),
//! and each side requires the other's (`ssl.CERT_REQUIRED`), so a peer without it is refused
//! during the handshake, before a single Dask message.
//!
//! By concern: the certificate set, a pure function of the cluster's name and namespace and
//! the time, and the Secret that carries it, owned by the scheduler pod so the garbage
//! collector deletes it with the cluster (`certificates`); the pod side, its mount in the
//! scheduler and worker containers and Dask's `distributed.comm.tls.*` settings naming it
//! (`pods`); the client side, files on the client's machine with the same settings as
//! `DASK_*` variables and as a Dask config file (`client`).

use crate::{Error, Result};
use serde::{Deserialize, Serialize};

mod certificates;
mod client;
mod pods;

pub use certificates::ClusterTls;
pub(crate) use certificates::{CA_KEY, CERT_KEY, KEY_KEY, secret_manifest, secret_name};
pub use client::ClientTlsFiles;
#[cfg(test)]
pub(crate) use pods::{CA_FILE_ENV, VOLUME_NAME, pod_env};
pub(crate) use pods::{mount, pod_volume};

/// How a cluster's client, scheduler and workers talk (`--tls`, `kubernetes.tls`, Python's
/// `security=`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    /// TLS with a certificate authority made for this cluster (the default): `tls://`
    /// addresses, certificates in a Secret mounted into the scheduler and worker pods, the
    /// client's copy handed to whoever started the cluster.
    #[default]
    ClusterCa,
    /// TLS that the pod templates configure themselves (their own certificates and
    /// `distributed.comm.tls.*`, as with classic dask-kubernetes' `security=`): dask-kube
    /// only uses `tls://` addresses and keeps the scheduler's HTTP port private.
    Provided,
    /// Plain `tcp://`, as classic dask-kubernetes without `security=`: anyone who reaches
    /// the scheduler's port can run code on every worker.
    Off,
}

impl TlsMode {
    /// The comm scheme of the cluster's addresses (`tls` or `tcp`).
    pub fn scheme(self) -> &'static str {
        match self {
            TlsMode::ClusterCa | TlsMode::Provided => "tls",
            TlsMode::Off => "tcp",
        }
    }

    /// Whether the scheduler's HTTP server (dashboard and `/api/v1`, which Dask serves
    /// without authentication) listens on the scheduler pod's loopback only, reached
    /// through port-forward, which the API server authorizes. With TLS: a closed comm port
    /// next to an open HTTP port that retires workers (and with `--jupyter` runs code)
    /// would close nothing.
    pub fn private_http(self) -> bool {
        self != TlsMode::Off
    }

    /// The spelling of `--tls`, `kubernetes.tls` and the template's annotation.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsMode::ClusterCa => "cluster-ca",
            TlsMode::Provided => "provided",
            TlsMode::Off => "off",
        }
    }
}

impl std::str::FromStr for TlsMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim() {
            "cluster-ca" | "cluster_ca" | "true" | "True" | "on" => Ok(TlsMode::ClusterCa),
            "provided" => Ok(TlsMode::Provided),
            "off" | "false" | "False" => Ok(TlsMode::Off),
            other => Err(Error::Usage(format!(
                "tls {other:?}: cluster-ca (a certificate authority per cluster, the default), \
                 provided (the pod templates configure TLS) or off"
            ))),
        }
    }
}

impl std::fmt::Display for TlsMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case::default_spelling("cluster-ca", TlsMode::ClusterCa)]
    #[case::python_true("True", TlsMode::ClusterCa)]
    #[case::provided("provided", TlsMode::Provided)]
    #[case::off("off", TlsMode::Off)]
    #[case::yaml_false("false", TlsMode::Off)]
    fn tls_modes_parse(#[case] text: &str, #[case] mode: TlsMode) {
        assert_eq!(text.parse::<TlsMode>().unwrap(), mode);
    }

    #[test]
    fn an_unknown_tls_mode_says_the_choices() {
        let err = "maybe".parse::<TlsMode>().unwrap_err().to_string();
        assert!(err.contains("cluster-ca") && err.contains("off"), "{err}");
    }
}
