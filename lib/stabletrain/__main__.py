"""``python -m stabletrain``: see :mod:`stabletrain.cli`."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
