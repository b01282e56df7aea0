"""``python -m bench.otel``: see :mod:`bench.otel`."""

from __future__ import annotations

import sys

from bench.otel import main

sys.exit(main(sys.argv[1:]))
