"""`python -m vgpuctl`: the same CLI as the `vgpuctl` console script, for hosts without the script on PATH."""

from __future__ import annotations

import sys

from vgpuctl._private.app import main

sys.exit(main())
