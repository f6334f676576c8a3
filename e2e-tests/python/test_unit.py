"""What needs no cluster: make_pod_spec, argument handling, pod objects, and the errors a
user sees before (or instead of) reaching an apiserver."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
import time

import dask.config
import pytest

import dask_kube
from dask_kube import KubeCluster, make_pod_spec
from dask_kube import _native


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
    out = dask_kube.clean_pod_template(pod)
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
                "worker_template_path": {str(tmp_path / "missing.yml")!r},
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
