"""A rank of a multi-node job, as `vgpu run --gang --any-node` starts it on every node of the lease.

Each node's copy meets the others at MASTER_ADDR:MASTER_PORT over TCP (what torch.distributed does with its
TCP store) and adds up the node ranks: the same rendezvous variables let a plain `torchrun train.py` run
with no arguments.
"""

from __future__ import annotations

import os
import socket
import time


def all_reduce(rank: int, world: int, addr: str, port: int) -> int:
    """Sum of every rank's number through rank 0, which listens at the rendezvous point."""
    if rank == 0:
        with socket.create_server((addr, port)) as server:
            peers = [server.accept()[0] for _ in range(world - 1)]
            total = rank + sum(int(p.makefile().readline()) for p in peers)
            for peer in peers:
                peer.sendall(f"{total}\n".encode())
                peer.close()
            return total
    deadline = time.monotonic() + 30
    while True:
        try:
            conn = socket.create_connection((addr, port), timeout=5)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    with conn:
        conn.sendall(f"{rank}\n".encode())
        return int(conn.makefile().readline())


def main() -> None:
    rank, world = int(os.environ["NODE_RANK"]), int(os.environ["NNODES"])
    addr, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    total = all_reduce(rank, world, addr, port)
    gpus = os.environ["CUDA_VISIBLE_DEVICES"]
    print(f"node rank {rank} of {world}: GPUs {gpus}; met at {addr}:{port}; sum of ranks = {total}", flush=True)


if __name__ == "__main__":
    main()
