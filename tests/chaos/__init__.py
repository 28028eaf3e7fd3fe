"""Fault injection against real daemons and etcd, and the pool invariants that must survive it."""
