"""Editor decisions as quality-filter training labels: the JSONL that `lookbook train quality --labels` reads.

One line per look an editor decided on, from the ledger's latest verdicts, so it runs while the
service is serving: approved and featured looks are "good", rejected ones "bad" with the reasons
the editor named from the quality filter's vocabulary.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.curation.desk import REJECT_REASONS
from services.curation.ledger import Ledger

log = logging.getLogger(__name__)

LABEL_OF_STATUS = {"approved": "good", "featured": "good", "rejected": "bad"}


@dataclass(frozen=True)
class ExportSummary:
    good: int
    bad: int
    missing_images: int


def reasons_in(text: str) -> list[str]:
    """The quality-filter reasons an editor's free-text reason names, in order, without repeats."""
    found: list[str] = []
    for token in re.split(r"[\s,;/]+", text.lower()):
        if token in REJECT_REASONS and token not in found:
            found.append(token)
    return found


def label_lines(ledger: Ledger) -> Iterator[tuple[dict[str, Any], bool]]:
    """(label line, whether its image file exists) for every look an editor approved, featured or rejected."""
    for decision in ledger.decisions():
        label = LABEL_OF_STATUS.get(decision.status)
        if label is None:
            continue
        line = {
            "image": str(Path(decision.image_path).resolve()),
            "label": label,
            "reasons": reasons_in(decision.reason) if label == "bad" else [],
            "source": "editor",
            "look_id": decision.look_id,
            "editor": decision.editor,
        }
        yield line, Path(decision.image_path).is_file()


def export_labels(ledger: Ledger, out: Path) -> ExportSummary:
    """Writes the label file atomically; looks whose image is gone are left out and counted."""
    good = bad = missing = 0
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with tmp.open("w") as handle:
        for line, exists in label_lines(ledger):
            if not exists:
                missing += 1
                log.warning(
                    "label image missing, left out",
                    extra={"look_id": line["look_id"], "image": line["image"]},
                )
                continue
            handle.write(json.dumps(line) + "\n")
            good += line["label"] == "good"
            bad += line["label"] == "bad"
    tmp.replace(out)
    return ExportSummary(good=good, bad=bad, missing_images=missing)
