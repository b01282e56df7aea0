import sys

from bench.temporal import main

sys.exit(main(sys.argv[1:]))
