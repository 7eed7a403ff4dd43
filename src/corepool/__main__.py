"""``python -m corepool`` is the ``corepool`` command."""

import sys

from corepool.cli import main

sys.exit(main())
