"""Generates the Python stubs for every contract under protos/ into shared/gen (the one generator).

Run `python scripts/gen_protos.py` after editing a .proto file; `--check` fails when the committed
stubs differ from what the protos generate, which CI runs.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTOS = ROOT / "protos"
OUT = ROOT / "shared" / "gen"


def generate(out: Path) -> None:
    import grpc_tools
    from grpc_tools import protoc  # type: ignore[import-untyped]

    include = Path(grpc_tools.__file__).parent / "_proto"
    files = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    out.mkdir(parents=True, exist_ok=True)
    bin_dir = Path(sys.executable).parent
    args = [
        "protoc",
        f"--plugin=protoc-gen-mypy={bin_dir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bin_dir / 'protoc-gen-mypy_grpc'}",
        f"-I{PROTOS}",
        f"-I{include}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *files,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed: fix the .proto error printed above, then run this again")
    # Packages need __init__.py so that `lookbook.outfit.v1` imports as a regular package.
    for folder in [out / "lookbook", *(p for p in (out / "lookbook").rglob("*") if p.is_dir())]:
        (folder / "__init__.py").touch()


def differences(a: Path, b: Path) -> list[str]:
    cmp = filecmp.dircmp(a, b, ignore=["__pycache__"])
    diffs = [*cmp.left_only, *cmp.right_only, *cmp.diff_files]
    for name in cmp.subdirs:
        diffs += [f"{name}/{d}" for d in differences(a / name, b / name)]
    return diffs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the committed stubs are stale")
    args = parser.parse_args()
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            generate(Path(tmp))
            stale = differences(Path(tmp) / "lookbook", OUT / "lookbook")
        if stale:
            print("stale generated stubs: " + ", ".join(stale), file=sys.stderr)
            print("run `python scripts/gen_protos.py` and commit shared/gen", file=sys.stderr)
            return 1
        print("generated stubs are up to date")
        return 0
    if (OUT / "lookbook").exists():
        shutil.rmtree(OUT / "lookbook")
    generate(OUT)
    print(f"wrote stubs to {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
