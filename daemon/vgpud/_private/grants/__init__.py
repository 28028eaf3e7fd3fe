"""Grants: the etcd writes that claim and free capacity (grant, end, resume, resize, GPU mode, drain).

Group-committed guarded transactions, the liveness leases of new grants, and the project-limit guard.
"""
