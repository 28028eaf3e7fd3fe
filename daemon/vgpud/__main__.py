"""`python -m vgpud ...` runs the daemon, as the `vgpud` console script does."""

from vgpud._private.cli import main

raise SystemExit(main())
