"""`python -m agent` is `muster`."""

import sys

from agent.cli import main

sys.exit(main())
