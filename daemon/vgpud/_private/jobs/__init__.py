"""Jobs: processes the node daemons start on a lease's nodes for `vgpu run`, with rendezvous variables."""
