"""What stands between clients and vgpud's services: the Unix socket door, gRPC's limits, the fd limit."""
