"""``python -m producer ARGS`` is ``tickcast produce ARGS``."""

from __future__ import annotations

import sys

from tickcast.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["produce", *sys.argv[1:]]))
