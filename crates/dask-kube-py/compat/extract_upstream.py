"""Extracts the API users' code calls from the dask-kubernetes wheels dask_kube mirrors
(2024.4.2, the last with the classic KubeCluster, and 2026.3.0, the operator era) into
upstream-api.json beside this file, which the README's compatibility table is checked
against (e2e-tests/python/test_unit.py: test_the_compatibility_table_covers_upstream).

Reads the wheels' source with `ast` (importing them would need kubernetes_asyncio, kr8s,
kopf...). Run it when a wheel is added or bumped:

    pip download --no-deps --dest ~/.cache/dask-on-k8s/wheels dask-kubernetes==2024.4.2 dask-kubernetes==2026.3.0
    python crates/dask-kube-py/compat/extract_upstream.py ~/.cache/dask-on-k8s/wheels/dask_kubernetes-*.whl
"""

from __future__ import annotations

import ast
import json
import sys
import zipfile
from pathlib import Path

import yaml

OUT = Path(__file__).with_name("upstream-api.json")

#: Per wheel: which era it is, and the public callables of each module users import.
#: (module path in the wheel, names exported there that dask_kube mirrors)
ERAS = {
    "2024.4.2": (
        "classic",
        {
            "dask_kubernetes/classic/kubecluster.py": ["KubeCluster"],
            "dask_kubernetes/common/objects.py": ["make_pod_spec", "clean_pod_template", "make_pod_from_dict"],
            "dask_kubernetes/common/auth.py": ["ClusterAuth", "InCluster", "KubeConfig", "KubeAuth"],
        },
    ),
    "2026.3.0": (
        "operator",
        {
            "dask_kubernetes/operator/kubecluster/kubecluster.py": [
                "KubeCluster",
                "make_cluster_spec",
                "make_scheduler_spec",
                "make_worker_spec",
            ],
        },
    ),
}


def _params(fn: ast.FunctionDef | ast.AsyncFunctionDef, method: bool) -> list[str]:
    args = fn.args
    names = [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs]
    if method and names and names[0] in ("self", "cls"):
        names = names[1:]
    return names


#: Private methods that are the public API under another name (classic's `logs()` is
#: `SpecCluster.logs`, which calls `_logs`).
RENAMED = {"_logs": "logs"}


def _is_public(name: str) -> bool:
    return not name.startswith("_") or name == "__init__" or name in RENAMED


def _class_items(cls: ast.ClassDef) -> list[str]:
    items = []
    for node in cls.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _is_public(node.name):
            decorators = {d.id if isinstance(d, ast.Name) else getattr(d, "attr", "") for d in node.decorator_list}
            if "property" in decorators:
                items.append(f"{cls.name}.{node.name}")
            elif node.name == "__init__":
                items.append(f"{cls.name}({', '.join(_params(node, True))})")
            else:
                name = RENAMED.get(node.name, node.name)
                items.append(f"{cls.name}.{name}({', '.join(_params(node, True))})")
    return items


def extract(wheel: Path) -> tuple[str, dict]:
    with zipfile.ZipFile(wheel) as z:
        version = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA")).split("-")[1].split(".dist")[0]
        era, modules = ERAS[version]
        items: list[str] = []
        for path, names in modules.items():
            tree = ast.parse(z.read(path))
            for node in tree.body:
                if getattr(node, "name", None) not in names:
                    continue
                if isinstance(node, ast.ClassDef):
                    items.extend(_class_items(node))
                elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    items.append(f"{node.name}({', '.join(_params(node, False))})")
        config = yaml.safe_load(z.read("dask_kubernetes/kubernetes.yaml"))
        keys = sorted(_flatten(config))
    return version, {"era": era, "items": items, "config": keys}


def _flatten(value, prefix=""):
    """Dotted config keys; a mapping that is a template (a pod, a Service) is one key."""
    if isinstance(value, dict) and value and not {"kind", "apiVersion", "spec"} & set(value):
        for key, sub in value.items():
            yield from _flatten(sub, f"{prefix}{key}.")
    else:
        yield prefix.rstrip(".")


def main(wheels: list[str]) -> None:
    out = {}
    for wheel in wheels:
        version, api = extract(Path(wheel))
        out[version] = api
    OUT.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    print(f"wrote {OUT} ({', '.join(sorted(out))})")


if __name__ == "__main__":
    main(sys.argv[1:])
