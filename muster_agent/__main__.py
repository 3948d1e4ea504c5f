"""`python -m muster_agent` is `muster`."""

import sys

from muster_agent.cli import main

sys.exit(main())
