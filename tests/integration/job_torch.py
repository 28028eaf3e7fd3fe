"""A torch.distributed (gloo) worker for tests/integration/test_jobs.py, started by torchrun on every node."""

from __future__ import annotations

import json
import os

import torch
import torch.distributed as dist


def main() -> None:
    dist.init_process_group("gloo")
    value = torch.tensor([float(dist.get_rank())])
    dist.all_reduce(value)
    report = {
        "rank": dist.get_rank(),
        "world": dist.get_world_size(),
        "sum": int(value.item()),
        "node_rank": os.environ["GROUP_RANK"],
        "master": f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}",
    }
    print(json.dumps(report), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
