"""``python -m rskeras COMMAND ...``: the ``rskeras`` command (see rskeras.commands)."""

import sys

from rskeras.commands import main

if __name__ == "__main__":
    sys.exit(main())
