"""``python -m bench.agent``: see :mod:`bench.agent`."""

from __future__ import annotations

import sys

from bench.agent import main

sys.exit(main(sys.argv[1:]))
