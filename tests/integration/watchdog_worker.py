"""A workload process for the watchdog tests: acquires in-process, then does what stdin tells it.

argv: ENDPOINT [--ignore-term]. Prints one JSON line {"lease": id, "token": token, "pid": pid} once the
lease is held, then reads commands: "usage BYTES" reports memory use, "release" releases, "exit" exits.
It never calls checkpoint(), so a preemption is never acknowledged.
"""

from __future__ import annotations

import json
import os
import signal
import sys

import vgpu


def main() -> int:
    endpoint = sys.argv[1]
    if "--ignore-term" in sys.argv[2:]:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    pool = vgpu.Pool(endpoint)
    lease = pool.acquire(memory="10GiB", compute=0.5, wait=False)
    print(json.dumps({"lease": lease.id, "token": lease.token, "pid": os.getpid()}), flush=True)
    for line in sys.stdin:
        command, _, argument = line.strip().partition(" ")
        if command == "usage":
            lease.report_usage(utilization=0.5, memory=int(argument))
            print("ok", flush=True)
        elif command == "release":
            lease.release()
            print("ok", flush=True)
        elif command == "exit":
            return 0
    signal.pause()  # stdin closed: stay until a signal ends the process
    return 0


if __name__ == "__main__":
    sys.exit(main())
