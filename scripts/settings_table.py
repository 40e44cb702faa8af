"""Prints the README's configuration table from the Settings class, so the two never drift apart.

`python scripts/settings_table.py` prints markdown; tests/unit/test_readme.py checks the README has every row.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.settings import PREFIX, REPO_ROOT, Settings  # noqa: E402


def rows() -> list[str]:
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = field.default
        if isinstance(default, Path):
            default = str(default).replace(str(REPO_ROOT), ".")
        elif isinstance(default, tuple):
            default = ",".join(default)
        elif hasattr(default, "value"):
            default = default.value
        shown = f"`{default}`" if default not in ("", None) else "(empty)"
        lines.append(f"| `{PREFIX}{name.upper()}` | {shown} | {field.description or ''} |")
    return lines


if __name__ == "__main__":
    print("\n".join(rows()))
