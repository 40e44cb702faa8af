"""Renders the README's configuration table from the Settings class, so the two never drift apart.

`python scripts/settings_table.py` prints the markdown; `--write README.md` replaces the table between
the settings-table markers; tests/unit/test_readme.py fails when the README's table is stale.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.settings import PREFIX, REPO_ROOT, Settings


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


START, END = "<!-- settings-table:start -->", "<!-- settings-table:end -->"


def render_into(text: str) -> str:
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n" + "\n".join(rows()) + f"\n{END}{tail}"


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--write":
        target = Path(sys.argv[2])
        target.write_text(render_into(target.read_text()))
    else:
        print("\n".join(rows()))
