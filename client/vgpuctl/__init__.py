"""vgpuctl — the admin CLI of the vgpu pool: nodes, GPUs and leases of the whole pool from any host.

Run it as `vgpuctl` (console script) or `python -m vgpuctl`; `vgpuctl --help` lists the verbs and the exit
codes. Nothing here is an API to import: the package's code lives under `vgpuctl._private`.
"""
