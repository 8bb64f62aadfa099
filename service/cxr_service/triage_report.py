"""``python -m cxr_service.triage_report PATH... [--labels CSV] [thresholds]``: what triage
thresholds would make of studies already analysed, without analysing them again.

A site tunes ``CXR_TRIAGE_*`` with it: each result.json holds the two figures the rule reads
(every analysed image's opacity scores, the study's P(negative)), so candidate thresholds are
tried offline on a month of results. ``--labels`` is a CSV of ``study_instance_uid,urgent``
(1/0, true/false, yes/no): the studies the site's readers would have wanted first. The report
gives, per priority, how many studies it gets, and with labels how many of the wanted ones reach
``urgent`` and at least ``priority``, and how many of the others are flagged ``urgent``.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from cxr_service.triage import RANK, Priority, Triage, TriageThresholds, at_least, decide

_TRUE = {"1", "true", "yes", "y", "urgent"}
_FALSE = {"0", "false", "no", "n", ""}


def result_documents(paths: Iterable[Path]) -> list[dict[str, Any]]:
    """The result.json documents under ``paths`` (files, or folders searched for result.json)."""
    found: list[dict[str, Any]] = []
    for path in paths:
        files = sorted(path.rglob("result.json")) if path.is_dir() else [path]
        for file in files:
            doc = json.loads(file.read_text(encoding="utf-8"))
            if not isinstance(doc, dict) or "study_instance_uid" not in doc or "images" not in doc:
                raise ValueError(f"{file}: not a cxr result.json")
            found.append(doc)
    return found


def triage_document(document: Mapping[str, Any], thresholds: TriageThresholds) -> Triage:
    """The rule on a result document's own figures (older results without ``triage`` too)."""
    analysed = [image for image in document["images"] if image.get("analysed")]
    scores = [float(o["score"]) for image in analysed for o in image.get("opacities", [])]
    negative = ((document.get("study") or {}).get("probabilities") or {}).get("negative")
    return decide(
        max(scores) if scores else None,
        None if negative is None else 1.0 - float(negative),
        thresholds,
        analysed=bool(analysed),
    )


def read_labels(path: Path) -> dict[str, bool]:
    labels: dict[str, bool] = {}
    with path.open(newline="", encoding="utf-8") as fh:
        for number, row in enumerate(csv.DictReader(fh), start=2):
            uid, value = (row.get("study_instance_uid") or "").strip(), (row.get("urgent") or "").strip().lower()
            if not uid or value not in _TRUE | _FALSE:
                raise ValueError(f"{path}:{number}: needs study_instance_uid and urgent (1/0), got {row}")
            labels[uid] = value in _TRUE
    return labels


def report(
    documents: Sequence[Mapping[str, Any]], thresholds: TriageThresholds, labels: Mapping[str, bool] | None = None
) -> dict[str, Any]:
    """Counts per priority and, with labels, the wanted studies that reach each level."""
    priorities = {str(doc["study_instance_uid"]): triage_document(doc, thresholds).priority for doc in documents}
    out: dict[str, Any] = {
        "studies": len(priorities),
        "thresholds": thresholds.to_json(),
        "counts": {str(p): sum(1 for v in priorities.values() if v == p) for p in sorted(Priority, key=RANK.__getitem__)},
    }
    if labels is not None:
        wanted = [p for uid, p in priorities.items() if labels.get(uid) is True]
        others = [p for uid, p in priorities.items() if labels.get(uid) is False]
        out["labelled"] = {
            "wanted": len(wanted),
            "wanted_urgent": sum(1 for p in wanted if p == Priority.URGENT),
            "wanted_at_least_priority": sum(1 for p in wanted if at_least(p, Priority.PRIORITY)),
            "wanted_unassessed": sum(1 for p in wanted if p == Priority.UNASSESSED),
            "others": len(others),
            "others_urgent": sum(1 for p in others if p == Priority.URGENT),
            "unlabelled": sum(1 for uid in priorities if uid not in labels),
        }
    return out


def _share(n: int, total: int) -> str:
    return f"{n} ({100.0 * n / total:.1f} %)" if total else str(n)


def format_report(doc: Mapping[str, Any]) -> str:
    lines = [f"{doc['studies']} studies; thresholds {json.dumps(doc['thresholds'])}"]
    lines += [f"  {priority:<10} {_share(n, doc['studies'])}" for priority, n in doc["counts"].items()]
    labelled = doc.get("labelled")
    if labelled:
        w, o = labelled["wanted"], labelled["others"]
        lines += [
            f"wanted first (labels): {w}",
            f"  urgent              {_share(labelled['wanted_urgent'], w)}",
            f"  at least priority   {_share(labelled['wanted_at_least_priority'], w)}",
            f"  unassessed          {_share(labelled['wanted_unassessed'], w)}",
            f"others flagged urgent: {_share(labelled['others_urgent'], o)} of {o}",
        ]
        if labelled["unlabelled"]:
            lines.append(f"no label: {labelled['unlabelled']} studies (counted above, not here)")
    return "\n".join(lines)


def get_args_parser() -> argparse.ArgumentParser:
    defaults = TriageThresholds()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", type=Path, help="result.json files or folders holding them")
    parser.add_argument("--labels", type=Path, default=None, help="CSV with study_instance_uid,urgent")
    for name in ("urgent_opacity", "urgent_abnormal", "priority_opacity", "priority_abnormal"):
        parser.add_argument(
            f"--{name.replace('_', '-')}", type=float, default=getattr(defaults, name), help=f"CXR_TRIAGE_{name.upper()}"
        )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        thresholds = TriageThresholds(
            urgent_opacity=args.urgent_opacity,
            urgent_abnormal=args.urgent_abnormal,
            priority_opacity=args.priority_opacity,
            priority_abnormal=args.priority_abnormal,
        )
        documents = result_documents(args.paths)
        labels = read_labels(args.labels) if args.labels else None
    except (ValueError, OSError) as exc:
        print(f"triage_report: {exc}", file=sys.stderr)
        return 2
    doc = report(documents, thresholds, labels)
    print(json.dumps(doc, indent=2) if args.json else format_report(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
