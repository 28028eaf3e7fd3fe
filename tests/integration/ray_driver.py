"""A Ray driver for tests/integration/test_jobs.py: an actor per GPU reports the GPU and node it was given.

Actors hold their GPU while they live, so the four report four GPUs (tasks could reuse one in turn).
"""

from __future__ import annotations

import json
import os

import ray


@ray.remote(num_gpus=1, num_cpus=0)
class Holder:
    def where(self) -> dict[str, object]:
        return {
            "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
            "cuda": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
            "node": ray.get_runtime_context().get_node_id(),
        }


def main() -> None:
    ray.init(log_to_driver=False)  # RAY_ADDRESS, set by vgpu run --ray
    resources = ray.cluster_resources()  # type: ignore[no-untyped-call]  # ray has no annotations here
    holders = [Holder.remote() for _ in range(int(resources["GPU"]))]  # type: ignore[attr-defined]  # ray.remote
    reports = ray.get([h.where.remote() for h in holders])
    print(json.dumps({"address": os.environ["RAY_ADDRESS"], "resources": resources, "tasks": reports}), flush=True)


if __name__ == "__main__":
    main()
