"""``python -m stabletrain``: see :mod:`stabletrain.cli`."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
