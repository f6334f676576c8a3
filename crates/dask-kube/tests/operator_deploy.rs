//! The manifests under deploy/operator/ say what the code does: the CRDs are what the types
//! generate, the two RBAC flavours grant the same rules (and exactly the rules the cluster
//! test proves needed), and the Deployments run the operator as the ServiceAccount they
//! bind. No cluster needed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod operator_common;

use operator_common::{deploy, documents, granted, listed};
use serde_json::Value;

fn kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind}"))
}

/// deploy/operator/crds.yaml is `dask-kube operator crds`: regenerate it with
/// `cargo run -p dask-kube -- operator crds > crates/dask-kube/deploy/operator/crds.yaml`.
#[test]
fn committed_crds_are_the_generated_ones() {
    let committed = std::fs::read_to_string(deploy("crds.yaml")).unwrap();
    assert_eq!(
        committed,
        dask_kube::operator_crds_yaml().unwrap(),
        "deploy/operator/crds.yaml is stale: regenerate it with `cargo run -p dask-kube -- operator crds`"
    );
}

/// What the cluster's hook applies (`dask-kube operator crds | kubectl apply -f -`) is the
/// committed file: the binary's `operator` verb is wired to the same CRDs.
#[test]
fn the_binary_prints_the_committed_crds() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dask-kube"))
        .args(["operator", "crds"])
        .env_remove("KUBECONFIG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let committed = std::fs::read_to_string(deploy("crds.yaml")).unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), committed);
}

#[test]
fn both_rbac_flavours_grant_exactly_the_proven_rules() {
    let cluster = documents(&deploy("rbac-cluster.yaml"));
    let namespace = documents(&deploy("rbac-namespace.yaml"));
    assert_eq!(granted(kind(&cluster, "ClusterRole")), listed());
    assert_eq!(granted(kind(&namespace, "Role")), listed());
    // Nothing else with cluster scope in the namespaced flavour.
    let kinds: Vec<&str> = namespace
        .iter()
        .map(|d| d["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["ServiceAccount", "Role", "RoleBinding"]);
}

#[test]
fn bindings_and_deployments_agree_on_the_service_account() {
    let cluster = documents(&deploy("rbac-cluster.yaml"));
    let binding = kind(&cluster, "ClusterRoleBinding");
    let sa = kind(&cluster, "ServiceAccount");
    assert_eq!(binding["subjects"][0]["name"], sa["metadata"]["name"]);
    assert_eq!(
        binding["subjects"][0]["namespace"],
        sa["metadata"]["namespace"]
    );
    assert_eq!(
        binding["roleRef"]["name"],
        kind(&cluster, "ClusterRole")["metadata"]["name"]
    );

    for (file, namespaced) in [("operator.yaml", false), ("operator-namespace.yaml", true)] {
        let docs = documents(&deploy(file));
        let deployment = kind(&docs, "Deployment");
        let pod = &deployment["spec"]["template"]["spec"];
        assert_eq!(pod["serviceAccountName"], sa["metadata"]["name"], "{file}");
        let container = &pod["containers"][0];
        assert!(
            container["image"]
                .as_str()
                .unwrap()
                .starts_with("ghcr.io/dask-on-k8s/dask-kube:"),
            "{file}"
        );
        let args: Vec<&str> = container["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(&args[..2], ["operator", "run"], "{file}");
        assert_eq!(args.contains(&"--namespace"), namespaced, "{file}");
        assert_eq!(
            deployment["spec"]["replicas"], 1,
            "{file}: one operator at a time"
        );
        assert_eq!(deployment["spec"]["strategy"]["type"], "Recreate", "{file}");
        if !namespaced {
            assert_eq!(
                deployment["metadata"]["namespace"],
                sa["metadata"]["namespace"]
            );
        }
    }
}
