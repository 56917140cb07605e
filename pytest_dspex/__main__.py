"""``python -m pytest_dspex COMMAND``: see ``pytest_dspex.cli``."""

from __future__ import annotations

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
