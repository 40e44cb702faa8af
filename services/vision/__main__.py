"""`python -m services.vision`: the vision service alone (scale-out); settings come from LOOKBOOK_* variables."""

from __future__ import annotations

import sys

from services.cli import main

if __name__ == "__main__":
    sys.exit(main(["serve", "--service", "vision", *sys.argv[1:]]))
