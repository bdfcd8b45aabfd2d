"""``python -m nnkit.tuning DIR``: write the sensitivity report of a study directory."""

import sys

from nnkit.tuning.cli import main

if __name__ == "__main__":
    sys.exit(main())
