"""``python -m bench.server``: see :mod:`bench.server`."""

from __future__ import annotations

import sys

from bench.server import main

sys.exit(main(sys.argv[1:]))
