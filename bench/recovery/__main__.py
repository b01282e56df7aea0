import sys

from bench.recovery import main

sys.exit(main(sys.argv[1:]))
