"""``python -m biomamba VERB ...``: the same as the ``biomamba`` command."""

import sys

from biomamba.cli import main

if __name__ == "__main__":
    sys.exit(main())
