"""vgpuctl's implementation; nothing here is a public API."""
