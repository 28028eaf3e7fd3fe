"""One module per vgpuctl verb; `vgpuctl._private.app` puts them together into the CLI."""
