"""`make demo`, second part: the README example from Python, with only the import line
changed from dask-kubernetes (`from dask_kube import KubeCluster`). The first part
(demo.py) shows the CLI, which stays the way to run a cluster from a shell or a pod.

    python e2e-tests/demo/python_example.py [worker-spec.yml]
"""

import sys
import time

t0 = time.monotonic()


def say(message: str) -> None:
    print(f"[{time.monotonic() - t0:7.1f}s] {message}", flush=True)


template = sys.argv[1] if len(sys.argv) > 1 else "worker-spec.yml"

# --- the README example; only this import differs from dask-kubernetes' ---
from dask_kube import KubeCluster  # noqa: E402

say(f"cluster = KubeCluster.from_yaml({template!r})")
cluster = KubeCluster.from_yaml(template)
say(f"cluster {cluster.name}: scheduler {cluster.scheduler_address}, dashboard {cluster.dashboard_link}")
cluster.scale_up(2)  # specify number of nodes explicitly
cluster.wait_for_workers(2, timeout=300)
say("cluster.scale_up(2): 2 workers connected")
cluster.adapt(minimum=1, maximum=4)  # or dynamically scale based on current workload
say("cluster.adapt(minimum=1, maximum=4)")

import dask.array as da  # noqa: E402
import distributed  # noqa: E402

client = distributed.Client(cluster)
array = da.ones((1000, 1000, 1000), chunks=(100, 100, 10))
say("array.mean().compute() ...")
result = array.mean().compute()
say(f"result: {result}")  # Should print 1.0
client.close()
cluster.close()
say(f"cluster.close(): {cluster.name} deleted")
if result != 1.0:
    sys.exit(f"expected 1.0, got {result}")
