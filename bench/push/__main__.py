"""``python -m bench.push``: see :mod:`bench.push`."""

from __future__ import annotations

import sys

from bench.push import main

sys.exit(main(sys.argv[1:]))
