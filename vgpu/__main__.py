"""`python -m vgpu run [options] -- CMD ARGS...` (the same as the `vgpu` console script)."""

import sys

from vgpu._private.run_command import main

sys.exit(main())
