"""``python -m gateway.cli``: the ``memgate`` command."""

import sys

from gateway.cli import main

sys.exit(main())
