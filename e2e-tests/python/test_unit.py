"""What needs no cluster: make_pod_spec, argument handling, pod objects, and the errors a
user sees before (or instead of) reaching an apiserver."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
import time

import asyncio
import inspect
import os
from pathlib import Path

import dask.config
import pytest

import dask_kube
from dask_kube import KubeCluster, make_pod_spec
from dask_kube import _native

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "crates/dask-kube/tests/fixtures"


def container(pod):
    return pod["spec"]["containers"][0]


def flag(args, name):
    return args[args.index(name) + 1] if name in args else None


@pytest.mark.parametrize(
    "kwargs, nthreads, memory_flag, limits, requests",
    [
        pytest.param(
            dict(threads_per_worker=2, memory_limit="6GB", memory_request="6GB", cpu_limit=2, cpu_request=2),
            "2", "6GB", {"cpu": "2", "memory": "6G"}, {"cpu": "2", "memory": "6G"},
            id="readme-worker-dask-units",
        ),
        pytest.param(
            dict(memory_limit="4G", memory_request="4G", cpu_limit=1, cpu_request=1),
            "1", "4G", {"cpu": "1", "memory": "4G"}, {"cpu": "1", "memory": "4G"},
            id="kubernetes-units",
        ),
        pytest.param(
            dict(threads_per_worker=1, memory_limit="1GiB"),
            "1", "1GiB", {"memory": "1Gi"}, None,
            id="binary-units-limit-only",
        ),
    ],
)
def test_make_pod_spec_flags_and_resources_agree(kwargs, nthreads, memory_flag, limits, requests):
    pod = make_pod_spec(image="ghcr.io/dask/dask:latest", **kwargs)
    c = container(pod)
    assert c["args"][:2] == ["dask", "worker"]
    assert flag(c["args"], "--nthreads") == nthreads
    assert flag(c["args"], "--memory-limit") == memory_flag
    assert flag(c["args"], "--death-timeout") == "60"
    for key, value in limits.items():
        assert c["resources"]["limits"][key] == value, c["resources"]
    if requests:
        for key, value in requests.items():
            assert c["resources"]["requests"][key] == value, c["resources"]
    assert pod["spec"]["restartPolicy"] == "Never"
    keys = {t["key"] for t in pod["spec"]["tolerations"]}
    assert keys == {"k8s.dask.org/dedicated", "k8s.dask.org_dedicated"}


def test_make_pod_spec_keeps_labels_env_annotations_and_extra_config():
    pod = make_pod_spec(
        image="img:1",
        labels={"foo": "bar"},
        env={"EXTRA_PIP_PACKAGES": "fastparquet", "N": 3},
        annotations={"team": "data"},
        extra_container_config={"image_pull_policy": "Always"},
        extra_pod_config={"node_selector": {"disk": "ssd"}},
    )
    c = container(pod)
    assert pod["metadata"]["labels"] == {"foo": "bar"}
    assert pod["metadata"]["annotations"] == {"team": "data"}
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["EXTRA_PIP_PACKAGES"] == "fastparquet" and env["N"] == "3"
    assert c["imagePullPolicy"] == "Always"
    assert pod["spec"]["nodeSelector"] == {"disk": "ssd"}


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param(dict(threads_per_worker=2, memory_limit="6GB", cpu_limit=2), id="readme"),
        pytest.param(dict(), id="no-resources"),
        pytest.param(dict(memory_limit="512MiB", memory_request="256MiB", cpu_request="500m"), id="requests-below-limits"),
    ],
)
def test_make_pod_spec_is_a_fixed_point_of_the_policy(kwargs):
    """The policy's defaults (dask-worker-spec, as the webhook runs them) change nothing
    in a labelled worker pod made by make_pod_spec."""
    pod = make_pod_spec(image="img", labels={"dask.org/component": "worker"}, **kwargs)
    assert _native.policy_defaults(json.dumps(pod)) is None


def test_policy_defaults_is_not_a_no_op():
    """Control for the test above: a bare worker pod does get defaults."""
    pod = {
        "metadata": {"labels": {"dask.org/component": "worker"}},
        "spec": {"containers": [{"name": "w", "image": "i", "args": ["dask", "worker", "--nthreads", "2"]}]},
    }
    changed = json.loads(_native.policy_defaults(json.dumps(pod)))
    assert changed["spec"]["restartPolicy"] == "Never"


@pytest.mark.parametrize(
    "kwargs, names",
    [
        pytest.param(dict(memory_limit="six gigs"), "memory_limit='six gigs'", id="bad-memory"),
        pytest.param(dict(cpu_request="two"), "cpu_request='two'", id="bad-cpu"),
        pytest.param(dict(memory_limit="auto"), "not a byte count", id="auto-memory"),
        pytest.param(dict(threads_per_worker=0), "threads_per_worker", id="zero-threads"),
        pytest.param(dict(threads_per_worker=4, cpu_limit="1"), "nthreads", id="threads-above-cpu-limit"),
    ],
)
def test_make_pod_spec_bad_input_is_a_value_error_naming_it(kwargs, names):
    with pytest.raises(ValueError) as info:
        make_pod_spec(image="img", **kwargs)
    assert isinstance(info.value, dask_kube.DaskKubeError)
    assert names.replace("'", '"') in str(info.value).replace("'", '"'), str(info.value)


class _Model:
    """A kubernetes.client model as the OpenAPI generator makes them."""

    def __init__(self, **fields):
        self.openapi_types = {k: "object" for k in fields}
        self.attribute_map = {k: "".join(w if i == 0 else w.title() for i, w in enumerate(k.split("_"))) for k in fields}
        for k, v in fields.items():
            setattr(self, k, v)


def test_pod_objects_become_api_dicts():
    pod = _Model(
        metadata=_Model(labels={"app_label": "x"}),
        spec=_Model(
            restart_policy="Never",
            containers=[_Model(name="w", image="i", image_pull_policy="IfNotPresent", args=None)],
        ),
    )
    out = dask_kube.objects.plain_pod(pod)
    assert out == {
        "metadata": {"labels": {"app_label": "x"}},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "w", "image": "i", "imagePullPolicy": "IfNotPresent"}]},
    }


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        pytest.param(dict(n_workers=-1), ValueError, "n_workers", id="negative-workers"),
        pytest.param(dict(deploy_mode="lcoal"), ValueError, "deploy_mode='lcoal'", id="unknown-deploy-mode"),
        pytest.param(dict(host="10.0.0.1"), ValueError, "host: where a local scheduler listens", id="host-with-remote-scheduler"),
        pytest.param(dict(port=8786, dashboard_address=":0"), ValueError, "dashboard_address, port", id="listen-settings-with-remote-scheduler"),
        pytest.param(dict(deploy_mode="local", shutdown_on_close=False), ValueError, "its scheduler is this process", id="local-scheduler-cannot-outlive-this-process"),
        pytest.param(dict(pod_template=42), TypeError, "pod template", id="template-of-wrong-type"),
        pytest.param(dict(security="yes"), TypeError, "security must be", id="security-of-wrong-type"),
        pytest.param(dict(deploy_mode="local", security=True), ValueError, "pass the local scheduler's Security", id="cluster-ca-needs-a-scheduler-pod"),
    ],
)
def test_bad_arguments_fail_before_anything_is_made(kwargs, error, message):
    with pytest.raises(error, match=message):
        KubeCluster(**kwargs)


def test_deploy_mode_comes_from_dask_config_and_is_checked_there_too():
    with dask.config.set({"kubernetes.deploy-mode": "somewhere"}):
        with pytest.raises(ValueError, match="deploy_mode='somewhere'"):
            KubeCluster("worker-spec.yml")
    with dask.config.set({"kubernetes.deploy-mode": "local"}):
        with pytest.raises(ValueError, match="from_name reconnects to a scheduler pod"):
            KubeCluster.from_name("some-cluster", deploy_mode="local")


@pytest.mark.parametrize(
    "security, mode",
    [
        pytest.param(None, None, id="default-is-the-librarys-cluster-ca"),
        pytest.param(True, "cluster-ca", id="true"),
        pytest.param(False, "off", id="false"),
        pytest.param("Security", "provided", id="classic-security-object"),
    ],
)
def test_classic_security_is_the_clusters_tls_mode(security, mode):
    from distributed.security import Security

    from dask_kube.cluster import _tls_mode

    given = Security() if security == "Security" else security
    assert _tls_mode(given, "remote") == mode
    assert _tls_mode(given, "local") is None, "a local scheduler takes security itself"


def test_the_client_security_is_the_clusters_certificate_in_memory():
    from distributed.security import Security

    from dask_kube.cluster import _client_security

    pem = {"mode": "cluster-ca", "ca": "-----BEGIN CERTIFICATE-----\nCA\n", "cert": "-----BEGIN CERTIFICATE-----\nC\n", "key": "-----BEGIN PRIVATE KEY-----\nK\n"}
    security = _client_security(json.dumps(pem), None)
    assert security.require_encryption
    assert (security.tls_ca_file, security.tls_client_cert, security.tls_client_key) == (pem["ca"], pem["cert"], pem["key"])
    assert "In-memory" in repr(security), "the PEM text is not shown"
    mine = Security(require_encryption=True)
    assert _client_security(json.dumps({"mode": "provided"}), mine) is mine
    with pytest.raises(ValueError, match="pass security=Security"):
        _client_security(json.dumps({"mode": "provided"}), None)
    assert not _client_security(json.dumps({"mode": "off"}), None).require_encryption


def test_the_default_cluster_has_tls_and_no_token_in_its_pods():
    """What KubeCluster(template) makes, rendered with no cluster: the workers reach the
    scheduler at tls://, both pods mount the cluster's certificates and no token."""
    options = {"request": {"worker_template": {"file": str(FIXTURES / "small-worker.yml")}, "name": "tlsdemo"},
               "config": {}, "environ": []}
    objects = json.loads(_native.render(json.dumps(options), "team"))
    kinds = [o["kind"] for o in objects]
    assert kinds == ["Pod", "Service", "Pod", "PodTemplate", "Secret"], kinds
    scheduler, service, worker = objects[:3]
    env = {e["name"]: e.get("value") for e in container(worker)["env"]}
    assert env["DASK_SCHEDULER_ADDRESS"] == "tls://tlsdemo-scheduler.team:8786"
    assert env["DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION"] == "True"
    for pod in (scheduler, worker):
        assert pod["spec"]["automountServiceAccountToken"] is False
        assert {"name": "dask-kube-tls", "secret": {"secretName": "tlsdemo-tls"}} in pod["spec"]["volumes"]
    assert [p["port"] for p in service["spec"]["ports"]] == [8786]
    off = json.loads(_native.render(json.dumps({**options, "request": {**options["request"], "tls": "off"}}), "team"))
    assert [o["kind"] for o in off] == ["Pod", "Service", "Pod", "PodTemplate"]


def test_unknown_keyword_is_a_type_error():
    with pytest.raises(TypeError, match="n_wrokers"):
        KubeCluster("worker-spec.yml", n_wrokers=3)


def test_missing_template_file_is_file_not_found_naming_it(tmp_path):
    missing = tmp_path / "no-such-worker-spec.yml"
    with pytest.raises(FileNotFoundError) as info:
        KubeCluster.from_yaml(missing)
    assert isinstance(info.value, dask_kube.TemplateFileNotFound)
    assert str(missing) in str(info.value)


@pytest.mark.parametrize(
    "text, message",
    [
        pytest.param("kind: Pod\nspec: [unclosed\n", "is not valid YAML", id="invalid-yaml"),
        pytest.param("kind: Deployment\nspec: {}\n", "invalid worker template", id="not-a-pod"),
        pytest.param("kind: Pod\nspec:\n  containers: []\n", "invalid worker template", id="no-containers"),
    ],
)
def test_bad_template_file_is_a_value_error_naming_file_and_problem(tmp_path, text, message):
    path = tmp_path / "worker-spec.yml"
    path.write_text(text)
    with pytest.raises(ValueError) as info:
        KubeCluster.from_yaml(path)
    assert isinstance(info.value, dask_kube.InvalidTemplate)
    assert str(path) in str(info.value) and message in str(info.value), str(info.value)


def test_config_template_path_is_read_through_dask_config(tmp_path):
    """KubeCluster() takes kubernetes.worker-template-path from dask.config, including
    dask.config.set in this process."""
    missing = tmp_path / "from-dask-config.yml"
    with dask.config.set({"kubernetes.worker-template-path": str(missing)}):
        with pytest.raises(FileNotFoundError, match="from-dask-config.yml"):
            KubeCluster()


def _kubeconfig(path, server):
    path.write_text(
        textwrap.dedent(
            f"""\
            apiVersion: v1
            kind: Config
            clusters: [{{name: c, cluster: {{server: "{server}", insecure-skip-tls-verify: true}}}}]
            users: [{{name: u, user: {{token: not-a-real-token}}}}]
            contexts: [{{name: x, context: {{cluster: c, user: u, namespace: default}}}}]
            current-context: x
            """
        )
    )


def test_unreachable_apiserver_is_a_connection_error_naming_it(tmp_path, monkeypatch, small_worker):
    # A loopback port nothing listens on.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    kubeconfig = tmp_path / "kubeconfig"
    _kubeconfig(kubeconfig, f"https://127.0.0.1:{port}")
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    t0 = time.monotonic()
    with pytest.raises(ConnectionError) as info:
        KubeCluster.from_yaml(small_worker, n_workers=0)
    assert isinstance(info.value, dask_kube.KubernetesUnreachable)
    assert f"127.0.0.1:{port}" in str(info.value) and "unreachable" in str(info.value), str(info.value)
    print(f"unreachable apiserver reported after {time.monotonic() - t0:.1f}s")


def test_missing_credentials_say_where_they_were_looked_for(tmp_path, monkeypatch, small_worker):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(ConnectionError, match="credentials"):
        KubeCluster.from_yaml(small_worker, n_workers=0)


class InCluster:
    """Stands in for classic dask-kubernetes' ``InCluster`` authenticator (by name)."""


def _unused_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    "wrap",
    [
        pytest.param(lambda kc: kc, id="a_kubeconfig"),
        pytest.param(lambda kc: [InCluster(), kc], id="classic_style_list"),
    ],
)
def test_auth_kubeconfig_is_used_instead_of_kubeconfig_env(tmp_path, monkeypatch, small_worker, wrap):
    port = _unused_loopback_port()
    kubeconfig = tmp_path / "given-kubeconfig"
    _kubeconfig(kubeconfig, f"https://127.0.0.1:{port}")
    # Without auth= this would be a credentials error: the environment's file is missing.
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    auth = wrap(dask_kube.KubeConfig(config_file=kubeconfig))
    with pytest.raises(dask_kube.KubernetesUnreachable) as info:
        KubeCluster.from_yaml(small_worker, n_workers=0, auth=auth)
    assert f"127.0.0.1:{port}" in str(info.value), str(info.value)


@pytest.mark.parametrize(
    "config_file, context, message",
    [
        pytest.param("missing", None, "missing-kubeconfig", id="missing_file_names_it"),
        pytest.param("given", "nope", 'context "nope"', id="unknown_context_names_it"),
    ],
)
def test_auth_problems_name_the_file_or_context(tmp_path, small_worker, config_file, context, message):
    given = tmp_path / "given-kubeconfig"
    _kubeconfig(given, f"https://127.0.0.1:{_unused_loopback_port()}")
    path = given if config_file == "given" else tmp_path / "missing-kubeconfig"
    with pytest.raises(dask_kube.KubernetesUnreachable, match=message):
        KubeCluster.from_yaml(small_worker, n_workers=0, auth=dask_kube.KubeConfig(config_file=path, context=context))


def test_auth_of_another_kind_is_a_type_error(small_worker):
    with pytest.raises(TypeError, match="auth= takes KubeConfig"):
        KubeCluster.from_yaml(small_worker, auth="~/.kube/config")


def test_version_is_the_crate_version():
    assert dask_kube.__version__ == "0.1.0"


@pytest.mark.parametrize(
    "run_atexit_first, outcome",
    [
        pytest.param(False, "TemplateFileNotFound", id="a-running-interpreter-gets-the-result"),
        pytest.param(True, "not handed back", id="after-atexit-no-result-reaches-python"),
    ],
)
def test_results_stop_reaching_python_once_the_interpreter_exits(tmp_path, run_atexit_first, outcome):
    """Results of awaitables come back to Python from the Rust runtime's threads; one that
    lands while the interpreter finalizes crashes the process (a SIGSEGV seen in CI after
    `cluster.close()`). Importing dask_kube registers an atexit callback after which no
    result is handed back. Run in a fresh interpreter, whose atexit callbacks we may run."""
    script = textwrap.dedent(
        f"""
        import asyncio, atexit, json
        from dask_kube import _native

        async def main():
            if {run_atexit_first}:
                atexit._run_exitfuncs()  # what the interpreter runs before it finalizes
            fut = _native.prepare(json.dumps({{
                "request": {{"worker_template": {{"file": {str(tmp_path / "missing.yml")!r}}}}},
                "config": {{}}, "environ": [],
            }}))
            done, _ = await asyncio.wait([fut], timeout=3)
            if not done:
                print("not handed back")
            else:
                print(type(fut.exception()).__name__)

        asyncio.run(main())
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == outcome, out.stdout + out.stderr


# -- one request for both shells ---------------------------------------------------------


def _shells_table() -> dict:
    text = (REPO / "crates/dask-kube-py/tests/fixtures/shells.json").read_text()
    return json.loads(text.replace("{fixtures}", str(FIXTURES)))


@pytest.mark.parametrize("case", _shells_table()["cases"], ids=lambda c: c["case"])
async def test_keyword_arguments_map_to_the_table_request(case):
    """KubeCluster(...)'s keywords ask for the request of crates/dask-kube-py/tests/
    fixtures/shells.json, which the CLI's flags are checked against (tests/shells.rs): both
    shells resolve to the same manifests."""
    with dask.config.set(case["config"]):
        cluster = KubeCluster(asynchronous=True, **case["python"])
        options = cluster._options
        from_keywords = json.loads(_native.render(json.dumps(options, default=str)))
        from_table = json.loads(
            _native.render(json.dumps({"request": case["request"], "config": options["config"],
                                       "environ": options["environ"]}))
        )
    assert from_keywords == from_table


@pytest.mark.parametrize("case", _shells_table()["adapt"], ids=lambda c: c["case"])
def test_adapt_keywords_are_the_table_tuning(case, monkeypatch):
    """adapt(...)'s keywords become the tuning (seconds) the table gives the CLI's flags."""
    seen = {}

    class Native:
        name = "c"

        def adapt(self, minimum, maximum, tuning, in_cluster):
            seen.update(minimum=minimum, maximum=maximum, tuning=json.loads(tuning))
            return json.dumps({"minimum": minimum, "maximum": maximum, "capped": None,
                               "controller": "c-controller", "controller_unavailable": None})

        def is_closed(self):
            return True

    cluster = KubeCluster.__new__(KubeCluster)
    cluster._native, cluster._deploy_mode, cluster._adaptive = Native(), "remote", None
    cluster._worker_pod = None
    monkeypatch.setattr(KubeCluster, "_log", lambda self, m: None, raising=False)
    KubeCluster.adapt(cluster, **case["python"])
    python = case["python"]
    assert (seen["minimum"], seen["maximum"]) == (python["minimum"], python["maximum"])
    assert seen["tuning"] == case["tuning"]


# -- Dask config as Dask users set it ---------------------------------------------------------


def test_upstream_config_defaults_are_registered_at_import():
    """As dask-kubernetes registers its kubernetes.yaml: every key reads after import."""
    assert dask.config.get("kubernetes.count.max") is None
    assert dask.config.get("kubernetes.count.start") == 0
    assert dask.config.get("kubernetes.name") == "dask-{user}-{uuid}"
    assert dask.config.get("kubernetes.scheduler-service-type") == "ClusterIP"
    assert dask.config.get("kubernetes.apply-default-affinity") == "preferred"


@pytest.mark.parametrize(
    "config, kwargs, check",
    [
        pytest.param({"kubernetes.env": {"TEAM": "data"}}, {}, lambda objs: ("TEAM", "data") in _env(objs[2]), id="env"),
        pytest.param({"kubernetes.scheduler-service-type": "NodePort"}, {}, lambda objs: objs[1]["spec"]["type"] == "NodePort", id="service-type"),
        pytest.param({"kubernetes.namespace": "team"}, {}, lambda objs: objs[0]["metadata"]["namespace"] == "team", id="namespace"),
        pytest.param({"kubernetes.idle-timeout": "1h"}, {}, lambda objs: "--idle-timeout" in objs[0]["spec"]["containers"][0]["args"], id="idle-timeout"),
    ],
)
async def test_dask_config_set_reaches_the_resolution(config, kwargs, check):
    with dask.config.set(config):
        cluster = KubeCluster(str(FIXTURES / "small-worker.yml"), name="demo", asynchronous=True, **kwargs)
        objects = json.loads(_native.render(json.dumps(cluster._options, default=str)))
    assert check(objects), objects


def _env(pod):
    return {(e["name"], e.get("value")) for e in pod["spec"]["containers"][0].get("env", [])}


def test_dask_config_set_is_read_when_the_library_needs_it():
    """Issue 25: `dask.config.set({"kubernetes.count.max": 1})` then `scale(10)` was not
    capped (the Rust side read the config files once). A running cluster reads the config
    through the function it is given, at each call; this reads through the same one."""
    from dask_kube.cluster import _config_now

    assert json.loads(_native.settings(_config_now))["count_max"] is None
    with dask.config.set({"kubernetes.count.max": 1, "kubernetes.env": {"A": "1"}}):
        now = json.loads(_native.settings(_config_now))
        assert now["count_max"] == 1 and now["env"] == {"A": "1"}
    assert json.loads(_native.settings(_config_now))["count_max"] is None


def test_a_config_function_that_fails_is_a_config_error():
    def broken():
        raise RuntimeError("no config today")

    with pytest.raises(dask_kube.InvalidConfig, match="no config today"):
        _native.settings(broken)


async def test_a_template_file_expands_environment_variables(tmp_path, monkeypatch):
    """As classic's from_yaml: ${VAR} in the file is expanded from the environment."""
    monkeypatch.setenv("DASK_KUBE_TEST_IMAGE", "registry.example/dask:1")
    path = tmp_path / "worker.yml"
    path.write_text((FIXTURES / "small-worker.yml").read_text().replace("ghcr.io/dask/dask:latest", "${DASK_KUBE_TEST_IMAGE}"))
    cluster = KubeCluster(str(path), name="demo", asynchronous=True)
    objects = json.loads(_native.render(json.dumps(cluster._options, default=str)))
    assert objects[2]["spec"]["containers"][0]["image"] == "registry.example/dask:1"


# -- deploy_mode="operator": a DaskCluster for the cluster's operator ------------------------


async def test_operator_mode_creates_the_dask_cluster_of_the_arguments():
    """The DaskCluster `deploy_mode="operator"` creates: the pods "remote" would run (worker
    defaults applied), replicas, Service type, and the idle timeout the operator acts on."""
    cluster = KubeCluster(
        str(FIXTURES / "small-worker.yml"), name="demo", namespace="team", n_workers=3, idle_timeout="2m",
        scheduler_service_type="NodePort", env={"TEAM": "data"}, deploy_mode="operator", asynchronous=True,
    )
    resource = json.loads(_native.render_dask_cluster(json.dumps(cluster._options, default=str)))
    # A DaskCluster carries no CA of its own (the operators' schedulers speak tcp://): the
    # pods "remote" runs with security=False.
    plain = {**cluster._options, "request": {**cluster._options["request"], "tls": "off"}}
    remote = json.loads(_native.render(json.dumps(plain, default=str)))
    assert "tls://" not in json.dumps(resource) and "dask-kube-tls" not in json.dumps(resource)
    assert resource["apiVersion"] == "kubernetes.dask.org/v1" and resource["kind"] == "DaskCluster"
    assert resource["metadata"]["name"] == "demo" and resource["metadata"]["namespace"] == "team"
    spec = resource["spec"]
    assert spec["worker"]["replicas"] == 3
    assert spec["idleTimeout"] == 120
    assert spec["scheduler"]["service"]["type"] == "NodePort"
    assert spec["worker"]["spec"]["containers"] == remote[2]["spec"]["containers"]
    assert ("TEAM", "data") in _env({"spec": spec["scheduler"]["spec"]})
    assert "restartPolicy" not in spec["scheduler"]["spec"]
    assert "--idle-timeout" not in spec["scheduler"]["spec"]["containers"][0]["args"]


@pytest.mark.parametrize(
    "create_mode, config, expected",
    [
        pytest.param(None, {}, "CREATE_OR_CONNECT", id="upstream-default"),
        pytest.param(None, {"kubernetes.create-mode": "CONNECT_ONLY"}, "CONNECT_ONLY", id="config"),
        pytest.param("create-only", {}, "CREATE_ONLY", id="spelled-loosely"),
        pytest.param(type("CreateMode", (), {"value": "CREATE_ONLY"})(), {}, "CREATE_ONLY", id="upstream-enum"),
    ],
)
async def test_operator_mode_reads_create_mode_as_upstream(create_mode, config, expected):
    with dask.config.set(config):
        cluster = KubeCluster(image="ghcr.io/dask/dask:latest", name="demo", deploy_mode="operator",
                              create_mode=create_mode, asynchronous=True)
    assert cluster._create_mode == expected
    reached = KubeCluster.from_name("demo", deploy_mode="operator", asynchronous=True)
    assert reached._create_mode == "CONNECT_ONLY" and reached.shutdown_on_close is False


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        pytest.param({"create_mode": "CREATE_ONLY"}, "create_mode= is for a DaskCluster", id="create-mode-without-operator"),
        pytest.param({"deploy_mode": "operator", "create_mode": "SOMETIMES"}, "CREATE_ONLY, CREATE_OR_CONNECT", id="bad-create-mode"),
        pytest.param({"deploy_mode": "operator", "host": "0.0.0.0"}, "where a local scheduler listens", id="listen-args"),
        pytest.param({"deploy_mode": "kopf"}, "'operator'", id="unknown-deploy-mode"),
    ],
)
async def test_operator_mode_refuses_what_does_not_apply(kwargs, needle):
    with pytest.raises(dask_kube.InvalidArgument, match=needle):
        KubeCluster(image="ghcr.io/dask/dask:latest", name="demo", asynchronous=True, **kwargs)


async def test_worker_groups_need_the_operator():
    cluster = KubeCluster(image="ghcr.io/dask/dask:latest", name="demo", asynchronous=True)
    with pytest.raises(dask_kube.InvalidArgument, match="DaskWorkerGroup"):
        cluster.add_worker_group("highmem")
    with pytest.raises(dask_kube.InvalidArgument, match="DaskWorkerGroup"):
        cluster.scale(2, worker_group="highmem")


# -- the dask-kubernetes API users' code calls ------------------------------------------------


def test_make_pod_spec_takes_classic_positional_arguments():
    """Classic's order: ..., extra_pod_config, resources, memory_limit, ..., gpu_limit,
    annotations; the result reads as classic's V1Pod did."""
    pod = make_pod_spec("img:1", {"team": "x"}, 2, {"A": "1"}, {}, {}, "GPU=1", "2GB", "2GB", 2, 2, 1, {"note": "n"})
    c = pod.spec.containers[0]
    assert flag(c.args, "--resources") == "GPU=1"
    assert flag(c.args, "--memory-limit") == "2GB"
    assert c.resources.limits["nvidia.com/gpu"] == "1"
    assert pod.metadata.labels == {"team": "x"} and pod.metadata.annotations == {"note": "n"}
    assert pod["spec"]["containers"][0] is c, "attribute and item access are one object"
    assert pod.spec.restart_policy == "Never"


@pytest.mark.parametrize("mode, term", [
    ("preferred", "preferredDuringSchedulingIgnoredDuringExecution"),
    ("required", "requiredDuringSchedulingIgnoredDuringExecution"),
])
def test_clean_pod_template_applies_classic_affinity(mode, term):
    pod = {"spec": {"containers": [{"name": "s", "image": "i"}]}}
    cleaned = dask_kube.clean_pod_template(pod, apply_default_affinity=mode, pod_type="scheduler")
    assert "scheduler" in json.dumps(cleaned.spec.affinity.node_affinity[term])
    assert [t["value"] for t in cleaned.spec.tolerations] == ["scheduler", "scheduler"]
    again = dask_kube.clean_pod_template(cleaned, apply_default_affinity=mode, pod_type="scheduler")
    assert again == cleaned, "a second pass changes nothing"


def test_pod_dicts_read_and_write_like_pod_objects():
    pod = dask_kube.PodDict({"spec": {"containers": [{"name": "w", "args": ["dask", "worker"]}]}})
    pod.spec.containers[0].args += ["--nthreads", "2"]
    pod.spec.node_selector = {"disk": "ssd"}
    pod.metadata = {"labels": {}}
    pod.metadata.labels["x"] = "y"
    assert pod == {
        "spec": {"containers": [{"name": "w", "args": ["dask", "worker", "--nthreads", "2"]}], "nodeSelector": {"disk": "ssd"}},
        "metadata": {"labels": {"x": "y"}},
    }
    assert pod.spec.tolerations is None, "an absent field reads as None, as on a V1Pod"
    assert json.loads(json.dumps(pod)) == pod.to_dict()


async def test_scale_by_memory_and_cores_counts_worker_pods():
    """SpecCluster.scale(memory=, cores=): enough worker pods of the template's size."""
    cluster = KubeCluster(str(FIXTURES / "small-worker.yml"), name="demo", asynchronous=True)
    cluster._worker_pod = json.loads(_native.render(json.dumps(cluster._options, default=str)))[2]
    # The fixture's workers: 1 thread and 1 GB each.
    assert cluster._workers_for(0, "3GB", None) == 3
    assert cluster._workers_for(0, None, 2) == 2
    assert cluster._workers_for(5, "1GB", 1) == 5
    cluster._worker_pod["spec"]["containers"][0]["args"] = ["dask", "worker"]
    with pytest.raises(ValueError, match="--memory-limit"):
        cluster._workers_for(0, "3GB", None)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        pytest.param(dict(image="i", resources={"cpu": "1"}), 'unknown field "cpu"', id="resources-unknown-field"),
        pytest.param(dict(image="i", resources={"limits": "1"}), "must be a mapping", id="resources-not-mapping"),
        pytest.param(dict(image="i", scheduler_service_type="Ingress"), "scheduler service type", id="service-type"),
        pytest.param(dict(image="i", apply_default_affinity="sometimes"), "unknown affinity mode", id="affinity"),
    ],
)
def test_operator_era_arguments_are_checked_before_anything_is_made(kwargs, message):
    with pytest.raises(ValueError, match=message):
        KubeCluster(name="demo", **kwargs)


async def test_custom_cluster_spec_makes_the_cluster():
    spec = {
        "apiVersion": "kubernetes.dask.org/v1", "kind": "DaskCluster", "metadata": {"name": "custom"},
        "spec": {"worker": {"replicas": 2, "spec": {"containers": [{"name": "worker", "image": "ghcr.io/dask/dask:latest",
                 "args": ["dask", "worker", "--nthreads", "1", "--memory-limit", "1GB"]}]}},
                 "scheduler": {"spec": {"containers": [{"name": "scheduler", "image": "ghcr.io/dask/dask:latest"}]},
                               "service": {"type": "NodePort"}}},
    }
    cluster = KubeCluster(custom_cluster_spec=spec, asynchronous=True)
    assert cluster.name == "custom"
    objects = json.loads(_native.render(json.dumps(cluster._options, default=str)))
    assert objects[0]["metadata"]["name"] == "custom" and objects[1]["spec"]["type"] == "NodePort"
    assert objects[1]["metadata"]["name"] == "custom-scheduler"


def test_auth_classes_say_what_they_connect_with(tmp_path):
    assert dask_kube.objects.auth_argument(dask_kube.KubeAuth("https://10.0.0.1:6443", api_key={"authorization": "Bearer t"}, verify_ssl=False)) == [
        {"explicit": {"host": "https://10.0.0.1:6443", "token": "t", "verify_ssl": False}}
    ]
    assert dask_kube.objects.auth_argument(dask_kube.ClusterAuth.DEFAULT) == [
        "in_cluster", {"kubeconfig": {"path": None, "context": None}}
    ]
    with pytest.raises(TypeError, match="unexpected arguments: nope"):
        dask_kube.KubeAuth("https://h", nope=1)


def test_kubeconfig_load_checks_the_file(tmp_path):
    """classic's `await KubeConfig(...).load()`: raises when the credentials do not load."""
    missing = tmp_path / "missing-kubeconfig"
    with pytest.raises(dask_kube.KubernetesUnreachable, match="missing-kubeconfig"):
        asyncio.run(dask_kube.KubeConfig(config_file=missing).load())
    good = tmp_path / "kubeconfig"
    _kubeconfig(good, "https://127.0.0.1:6443")
    asyncio.run(dask_kube.KubeConfig(config_file=good).load())


def test_scale_in_async_code_runs_awaited_or_not(monkeypatch):
    """scale() returns a scheduled future in asynchronous code: awaiting it is optional."""
    ran = []
    monkeypatch.setattr(KubeCluster, "asynchronous", property(lambda self: True))

    async def main():
        cluster = KubeCluster.__new__(KubeCluster)
        cluster._adaptive = None
        cluster._worker_pod = None

        async def fake_scale(n, force=False):
            ran.append(n)

        cluster._scale = fake_scale
        cluster.scale(2)  # not awaited
        await asyncio.sleep(0)
        await cluster.scale(3)  # awaited

    asyncio.run(main())
    assert ran == [2, 3]


def test_signatures_accept_the_upstream_keywords():
    """Every keyword of classic's and the operator's KubeCluster is accepted (the README's
    compatibility table says which ones act and which are accepted for compatibility)."""
    parameters = inspect.signature(KubeCluster).parameters
    for keyword in ["pod_template", "scheduler_pod_template", "apply_default_affinity", "scheduler_service_wait_timeout",
                    "auth", "scheduler_service_type", "resource_timeout", "port_forward_cluster_ip",
                    "scheduler_forward_port", "custom_cluster_spec", "jupyter", "idle_timeout", "resources"]:
        assert keyword in parameters, keyword
    assert inspect.signature(KubeCluster.adapt).parameters["minimum"].default is None
    assert list(inspect.signature(make_pod_spec).parameters)[:13] == [
        "image", "labels", "threads_per_worker", "env", "extra_container_config", "extra_pod_config", "resources",
        "memory_limit", "memory_request", "cpu_limit", "cpu_request", "gpu_limit", "annotations"]


# -- the README's compatibility table ------------------------------------------------------

_ERAS = {"classic": "2024.4.2", "operator": "2026.3.0"}


def _upstream_api() -> dict:
    return json.loads((REPO / "crates/dask-kube-py/compat/upstream-api.json").read_text())


def _split_api(cell: str) -> list[str]:
    """`` `A(x, y)`, `B.c()` `` -> ["A(x, y)", "B.c()"]: the backquoted items of a cell."""
    return [part for i, part in enumerate(cell.split("`")) if i % 2 == 1]


def _expand(item: str) -> list[tuple[str, str | None]]:
    """An item as (callable, parameter) pairs: `A(x, y)` -> (A, x), (A, y); `A.b()` ->
    (A.b, None); `A.b` -> (A.b, None); a config key -> (key, None)."""
    if "(" not in item:
        return [(item, None)]
    name, params = item.split("(", 1)
    params = [p.strip() for p in params.rstrip(")").split(",") if p.strip()]
    return [(name, None)] + [(name, p) for p in params]


def _compat_rows() -> list[tuple[str, str, str, str]]:
    text = (REPO / "README.md").read_text()
    block = text.split("<!-- compat-table: begin -->")[1].split("<!-- compat-table: end -->")[0]
    rows = []
    for line in block.strip().splitlines()[2:]:
        era, api, status, why = [c.strip() for c in line.strip("|").split("|")]
        rows.append((era, api, status, why))
    return rows


def _dask_kube_has(name: str, param: str | None) -> bool:
    """Whether dask_kube offers `name` (a callable, method, property or config key) and, when
    given, its keyword `param`."""
    if name.startswith("kubernetes."):
        return dask.config.get(name, default=KeyError) is not KeyError
    target = dask_kube
    for part in name.split("."):
        target = getattr(target, part, None)
        if target is None:
            return False
    if param is None:
        return True
    if isinstance(target, property):
        return False
    return param in inspect.signature(target).parameters


def test_the_compatibility_table_covers_upstream():
    """Every upstream parameter, method and config key is in exactly one row; have/differs
    rows exist in dask_kube, missing rows do not; differs and missing say why."""
    upstream = _upstream_api()
    wanted: dict[str, set] = {}
    for era, version in _ERAS.items():
        api = upstream[version]
        wanted[era] = {pair for item in api["items"] for pair in _expand(item)} | {(k, None) for k in api["config"]}
    seen: dict[str, list] = {"classic": [], "operator": []}
    for era, api, status, why in _compat_rows():
        assert status in ("have", "differs", "missing"), (api, status)
        assert status == "have" or why, f"{api}: a {status} row says why"
        pairs = [pair for item in _split_api(api) for pair in _expand(item)]
        if era == "both":
            for pair in pairs:
                eras = [e for e in ("classic", "operator") if pair in wanted[e]]
                assert eras, f"{pair}: in neither upstream"
                for target in eras:
                    seen[target].append(pair)
        else:
            seen[era].extend(pairs)
        for name, param in pairs:
            has = _dask_kube_has(name, param)
            if status == "missing":
                if param is not None or name.startswith("kubernetes."):
                    assert not has, f"{name}({param}) is marked missing but dask_kube has it"
                elif not any(p for n, p in pairs if n == name):
                    assert not has, f"{name} is marked missing but dask_kube has it"
            else:
                assert has, f"{name}({param or ''}) is marked {status} but dask_kube lacks it"
    for era in ("classic", "operator"):
        # A callable's own entry is implied by its parameters' rows.
        listed = set(seen[era])
        listed |= {(name, None) for name, param in listed if param is not None}
        missing = {pair for pair in wanted[era] if pair not in listed}
        assert not missing, f"{era}: upstream items the table does not cover: {sorted(missing, key=str)}"
        params = [pair for pair in seen[era] if pair[1] is not None or pair[0].startswith("kubernetes.")]
        duplicates = {pair for pair in params if params.count(pair) > 1}
        assert not duplicates, f"{era}: in more than one row: {sorted(duplicates, key=str)}"
        extra = {pair for pair in listed if pair not in wanted[era]}
        assert not extra, f"{era}: rows for what upstream does not have: {sorted(extra, key=str)}"


def test_the_registered_config_has_every_upstream_key():
    upstream = _upstream_api()
    for version in _ERAS.values():
        for key in upstream[version]["config"]:
            assert dask.config.get(key, default=KeyError) is not KeyError, key
