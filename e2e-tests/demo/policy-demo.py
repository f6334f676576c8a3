#!/usr/bin/env python3
"""Runs the compiled policy on a pod manifest with kwctl and shows the result.

Wraps the manifest (default: the README's worker-spec.yml) in the AdmissionReview a
kube-apiserver would send for `kubectl create`, evaluates it with `kwctl run`, then prints
the decision, the JSONPatch and the patched pod.

    policy-demo.py KWCTL MODULE [MANIFEST] [--settings-json JSON]
"""
import argparse
import base64
import copy
import json
import subprocess
import sys
import tempfile
import uuid

import yaml


def admission_review(obj):
    kind = obj.get("kind", "Pod")
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": {"group": "", "version": "v1", "kind": kind},
            "resource": {"group": "", "version": "v1", "resource": kind.lower() + "s"},
            "operation": "CREATE",
            "namespace": "default",
            "userInfo": {"username": "demo"},
            "object": obj,
            "oldObject": None,
            "dryRun": False,
        },
    }


def apply_patch(obj, patch):
    """Applies the add/replace/remove operations json_patch::diff produces."""
    obj = copy.deepcopy(obj)
    for op in patch:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        parent = obj
        for part in parts[:-1]:
            parent = parent[int(part)] if isinstance(parent, list) else parent[part]
        last = parts[-1]
        if isinstance(parent, list):
            index = len(parent) if last == "-" else int(last)
            if op["op"] == "add":
                parent.insert(index, op["value"])
            elif op["op"] == "replace":
                parent[index] = op["value"]
            else:
                del parent[index]
        elif op["op"] == "remove":
            del parent[last]
        else:
            parent[last] = op["value"]
    return obj


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kwctl")
    parser.add_argument("module")
    parser.add_argument("manifest", nargs="?", default="worker-spec.yml")
    parser.add_argument("--settings-json", default="{}")
    args = parser.parse_args()

    with open(args.manifest) as f:
        pod = yaml.safe_load(f)
    pod.setdefault("apiVersion", "v1")
    pod.setdefault("metadata", {}).setdefault("name", "dask-worker-demo")
    with tempfile.NamedTemporaryFile("w", suffix=".json") as request:
        json.dump(admission_review(pod), request)
        request.flush()
        result = subprocess.run(
            [args.kwctl, "run", "--request-path", request.name,
             "--settings-json", args.settings_json, args.module],
            capture_output=True, text=True)
    if result.returncode != 0:
        sys.stderr.write(result.stderr)
        return result.returncode
    # kwctl prints the response as its last line of stdout.
    response = json.loads(result.stdout.strip().splitlines()[-1])
    print(f"== kwctl run {args.module} on {args.manifest}")
    print(json.dumps(response))
    print(f"\n== decision: {'allowed' if response['allowed'] else 'rejected'}")
    if not response["allowed"]:
        print(response.get("status", {}).get("message", ""))
        return 1
    for warning in response.get("warnings") or []:
        print(f"warning: {warning}")
    if "patch" not in response:
        print("no patch: the pod already has every default")
        return 0
    patch = json.loads(base64.b64decode(response["patch"]))
    print(f"\n== JSONPatch ({len(patch)} operations)")
    for op in patch:
        print(f"  {op['op']:8} {op['path']} = {json.dumps(op.get('value'))}")
    print("\n== the pod as stored")
    print(yaml.safe_dump(apply_patch(pod, patch), sort_keys=False), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
