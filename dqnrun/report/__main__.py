"""`python -m dqnrun.report DIR ...`: the same as `dqnrun report DIR ...`."""

import sys

from dqnrun.report.command import main

sys.exit(main(sys.argv[1:]))
