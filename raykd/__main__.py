"""``python -m raykd``: the same command line as the ``raykd`` console script and ``python cli.py``."""

import sys

from cli import main

if __name__ == "__main__":
    sys.exit(main())
