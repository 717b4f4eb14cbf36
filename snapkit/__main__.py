"""Allow ``python3 -m snapkit`` where no console script is installed (inside guests)."""

import sys

from snapkit.cli import main

sys.exit(main())
