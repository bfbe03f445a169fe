"""``python -m bayesdistill ...``: the same as the ``bayesdistill`` command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
