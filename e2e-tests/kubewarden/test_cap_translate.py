"""cap-translate on the README's ClusterAdmissionPolicy, read from the README itself.

What the translator writes is checked field by field against what Kubewarden's controller
writes for a ClusterAdmissionPolicy (see the translator's header); `policy.bats` then has
policy-server load the translated entry and serve the policy under the webhook's path.
"""
import base64
import copy
import importlib.machinery
import importlib.util
import json
import pathlib

import pytest
import yaml

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parents[1]


def load_translator():
    loader = importlib.machinery.SourceFileLoader("cap_translate", str(HERE / "cap-translate"))
    spec = importlib.util.spec_from_loader("cap_translate", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


ct = load_translator()
MODULE = "/abs/target/wasm32-wasip1/release/annotated-policy.wasm"
CA = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


@pytest.fixture(scope="module")
def cap():
    return ct.readme_cap((REPO / "README.md").read_text())


def webhook_of(cap, **address):
    pid = ct.policy_id(cap)
    return ct.webhook_configuration(cap, ct.client_config(pid, CA, **address))["webhooks"][0]


def test_the_readme_holds_one_cluster_admission_policy(cap):
    assert cap["apiVersion"] == "policies.kubewarden.io/v1"
    assert cap["kind"] == "ClusterAdmissionPolicy"
    assert cap["metadata"]["name"] == "dask-worker-defaults"
    assert cap["spec"]["mutating"] is True


def test_readme_rules_and_background_audit_are_the_metadata_s(cap):
    metadata = yaml.safe_load((REPO / "policy-metadata.yml").read_text())
    assert cap["spec"]["rules"] == metadata["rules"]
    assert cap["spec"]["backgroundAudit"] is metadata["backgroundAudit"] is False
    version = metadata["annotations"]["io.kubewarden.policy.version"]
    oci = metadata["annotations"]["io.kubewarden.policy.ociUrl"]
    assert cap["spec"]["module"] == f"registry://{oci}:v{version}"


def test_policy_server_entry_is_the_controller_s(cap):
    pid, entry = ct.policy_server_entry(cap, MODULE)
    assert pid == "clusterwide-dask-worker-defaults"
    assert entry == {
        "namespacedName": {"Namespace": "", "Name": "dask-worker-defaults"},
        "module": "file://" + MODULE,
        "policyMode": "protect",
        "allowedToMutate": True,
        "settings": cap["spec"]["settings"],
        "hostCapabilities": ["*"],
    }


def test_mutating_webhook_configuration_is_the_controller_s(cap):
    pid = ct.policy_id(cap)
    client = ct.client_config(pid, CA, service=("kubewarden", "policy-server-default", 443))
    config = ct.webhook_configuration(cap, client)
    assert config["kind"] == "MutatingWebhookConfiguration"
    assert config["metadata"] == {
        "name": "clusterwide-dask-worker-defaults",
        "labels": {"app.kubernetes.io/part-of": "kubewarden"},
        "annotations": {"kubewardenPolicyName": "dask-worker-defaults",
                        "kubewardenPolicyNamespace": ""},
    }
    assert config["webhooks"] == [{
        "name": "clusterwide-dask-worker-defaults.kubewarden.admission",
        "clientConfig": {
            "service": {"namespace": "kubewarden", "name": "policy-server-default",
                        "path": "/validate/clusterwide-dask-worker-defaults", "port": 443},
            "caBundle": base64.b64encode(CA).decode(),
        },
        "rules": cap["spec"]["rules"],
        "failurePolicy": "Fail",
        "namespaceSelector": {"matchExpressions": [
            {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kubewarden"]}]},
        "sideEffects": "None",
        "timeoutSeconds": 10,
        "admissionReviewVersions": ["v1"],
        "matchConditions": cap["spec"]["matchConditions"],
    }]


def test_the_readme_policy_sends_only_what_it_can_change(cap):
    webhook = webhook_of(cap, url="https://127.0.0.1:8443")
    # No objectSelector (it would hide workload templates); one CEL condition that selects
    # worker pods and templates by the default workerSelectors, the operator's kinds always.
    assert "objectSelector" not in webhook
    [condition] = webhook["matchConditions"]
    expression = condition["expression"]
    for needle in ("'dask.org/component'", "'worker'", "'app'", "'dask'", "'component'",
                   "'dask-worker'", "kubernetes.dask.org", "spec.?template.?metadata.?labels",
                   "spec.?jobTemplate.?spec.?template.?metadata.?labels"):
        assert needle in expression, needle
    assert webhook["failurePolicy"] == "Fail"


def test_url_client_config_appends_the_policy_path(cap):
    webhook = webhook_of(cap, url="https://127.0.0.1:8443/")
    assert webhook["clientConfig"] == {
        "url": "https://127.0.0.1:8443/validate/clusterwide-dask-worker-defaults",
        "caBundle": base64.b64encode(CA).decode(),
    }


def minimal_cap(**spec):
    cap = {"apiVersion": "policies.kubewarden.io/v1", "kind": "ClusterAdmissionPolicy",
           "metadata": {"name": "p"},
           "spec": {"module": "registry://x/p:v1", "rules": [
               {"apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"],
                "operations": ["CREATE"]}]}}
    cap["spec"].update(spec)
    return cap


def test_crd_defaults_apply_and_unset_fields_stay_unset():
    webhook = webhook_of(minimal_cap(mutating=True), url="https://h")
    assert webhook["timeoutSeconds"] == 10
    assert webhook["sideEffects"] == "None"
    for absent in ("failurePolicy", "matchPolicy", "objectSelector", "matchConditions"):
        assert absent not in webhook
    _, entry = ct.policy_server_entry(minimal_cap(), MODULE)
    assert entry["policyMode"] == "protect" and entry["allowedToMutate"] is False
    assert "settings" not in entry


def test_a_validating_policy_gets_a_validating_webhook():
    pid = "clusterwide-p"
    config = ct.webhook_configuration(minimal_cap(mutating=False), ct.client_config(pid, CA, url="https://h"))
    assert config["kind"] == "ValidatingWebhookConfiguration"


@pytest.mark.parametrize("spec, selector", [
    ({"namespaceSelector": {"matchLabels": {"a": "b"},
                            "matchExpressions": [{"key": "team", "operator": "In", "values": ["x"]}]}},
     {"matchExpressions": [
         {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["ns"]},
         {"key": "team", "operator": "In", "values": ["x"]}]}),
    ({"allowInsideAdmissionControllerNamespace": True,
      "namespaceSelector": {"matchLabels": {"a": "b"}}},
     {"matchLabels": {"a": "b"}}),
    ({"allowInsideAdmissionControllerNamespace": True}, None),
])
def test_namespace_selector_as_the_controller_merges_it(spec, selector):
    cap = minimal_cap(**spec)
    webhook = ct.webhook_configuration(cap, ct.client_config("clusterwide-p", CA, url="https://h"),
                                       deployments_namespace="ns")["webhooks"][0]
    assert webhook.get("namespaceSelector") == selector


def test_message_eval_timeout_and_monitor_mode_reach_the_entry():
    cap = minimal_cap(mode="monitor", message="no", timeoutEvalSeconds=3, timeoutSeconds=5,
                      settings={"a": 1})
    _, entry = ct.policy_server_entry(cap, MODULE)
    assert (entry["policyMode"], entry["message"], entry["timeoutEvalSeconds"], entry["settings"]) \
        == ("monitor", "no", 3, {"a": 1})


@pytest.mark.parametrize("edit, error", [
    (lambda c: c["spec"].pop("rules"), "spec.rules"),
    (lambda c: c["spec"]["rules"][0].update(operations=[]), "operations"),
    (lambda c: c["spec"].pop("module"), "spec.module"),
    (lambda c: c.update(kind="AdmissionPolicy"), "not a policies.kubewarden.io/v1"),
    (lambda c: c["spec"].update(timeoutSeconds=5, timeoutEvalSeconds=6), "timeoutEvalSeconds"),
    (lambda c: c["spec"].update(timeoutSeconds=60), "between 2 and 30"),
    (lambda c: c["spec"].update(mode="audit"), "protect or monitor"),
])
def test_a_cap_the_controller_would_refuse_is_refused(edit, error):
    cap = minimal_cap()
    edit(cap)
    with pytest.raises(ct.TranslateError, match=error):
        ct.policy_server_entry(cap, MODULE)


def test_relative_module_path_is_refused(cap):
    with pytest.raises(ct.TranslateError, match="absolute"):
        ct.policy_server_entry(cap, "annotated-policy.wasm")


def test_readme_without_exactly_one_cap_is_refused(cap):
    block = "```yaml\n" + yaml.safe_dump(cap) + "```\n"
    with pytest.raises(ct.TranslateError, match="found 2"):
        ct.readme_cap(block + block)
    with pytest.raises(ct.TranslateError, match="found 0"):
        ct.readme_cap("```yaml\nkind: Pod\n```\n")


def test_cli_writes_both_files(tmp_path, capsys):
    ca = tmp_path / "ca.crt"
    ca.write_bytes(CA)
    policies, webhook = tmp_path / "policies.yml", tmp_path / "webhook.json"
    status = ct.main(["--readme", str(REPO / "README.md"), "--module", MODULE,
                      "--service", "kubewarden/policy-server-default", "--ca-bundle", str(ca),
                      "--policies-out", str(policies), "--webhook-out", str(webhook)])
    assert status == 0, capsys.readouterr().err
    entries = yaml.safe_load(policies.read_text())  # policy-server reads it as YAML
    assert list(entries) == ["clusterwide-dask-worker-defaults"]
    service = json.loads(webhook.read_text())["webhooks"][0]["clientConfig"]["service"]
    assert (service["namespace"], service["name"], service["port"]) == \
        ("kubewarden", "policy-server-default", 443)


def test_cli_reports_a_bad_cap_without_a_traceback(tmp_path, capsys):
    bad = tmp_path / "cap.yml"
    bad.write_text(yaml.safe_dump(copy.deepcopy(minimal_cap(timeoutSeconds=1))))
    ca = tmp_path / "ca.crt"
    ca.write_bytes(CA)
    status = ct.main(["--cap", str(bad), "--module", MODULE, "--url", "https://h",
                      "--ca-bundle", str(ca), "--policies-out", "-", "--webhook-out", "-"])
    assert status == 1
    assert "cap-translate: spec.timeoutSeconds 1" in capsys.readouterr().err
