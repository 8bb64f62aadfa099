"""``cxr analyze PATH... --out DIR``: analyse DICOM files or folders, one result folder per study.

Instances are grouped into studies by StudyInstanceUID. Per-image problems are reported in each
study's result; the exit status is non-zero only when nothing at all could be analysed.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from cxr_models.inference.pipeline import Analyzer
from cxr_service.analysis import REPORT_MIN_SCORE, algorithm_info, analyze_study, report_min_score
from cxr_service.ingest import NO_STUDY_KEY, IngestLimits, group_by_study, ingest_file, iter_dicom_paths
from cxr_service.outputs import summarize, write_study_folder

logger = logging.getLogger(__name__)

UNATTRIBUTED_NAME = "not_analysed.json"


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Analyse chest radiographs and write SR, GSPS, SEG, SC and result.json")
    parser.add_argument("paths", nargs="+", type=Path, help="DICOM files or folders (searched recursively)")
    parser.add_argument("--out", type=Path, required=True, help="output folder; one subfolder per study")
    parser.add_argument("--weights", type=Path, default=None, help="weights folder (default: shipped demo weights)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--max-pixels", type=int, default=IngestLimits().max_pixels, help="largest image accepted")
    parser.add_argument(
        "--min-score",
        type=float,
        default=None,
        help="lowest fused opacity score reported (0-1); default: the weights manifest's reporting_threshold, "
        f"else {REPORT_MIN_SCORE}",
    )
    return parser


def main(args: argparse.Namespace) -> None:
    limits = IngestLimits(max_pixels=args.max_pixels)
    analyzer = Analyzer.load(weights_dir=args.weights, device=args.device)
    algorithm = algorithm_info(analyzer.manifest)
    min_score = report_min_score(analyzer.manifest, args.min_score)
    start = time.perf_counter()
    items = [ingest_file(p, limits=limits) for p in iter_dicom_paths(args.paths)]
    ingest_ms = (time.perf_counter() - start) * 1000.0
    groups = group_by_study(items)
    args.out.mkdir(parents=True, exist_ok=True)
    unattributed = [
        {"source": r.source, "sop_instance_uid": r.sop_instance_uid, "reason": r.reason}
        for r in groups.pop(NO_STUDY_KEY, [])
    ]
    n_images = max(1, len(items))
    analysed_total = 0
    for study_uid, study_items in groups.items():
        study = analyze_study(
            study_items,
            study_instance_uid=study_uid,
            analyzer=analyzer,
            algorithm=algorithm,
            ingest_ms=ingest_ms * len(study_items) / n_images,
            min_score=min_score,
        )
        unattributed.extend(
            {"source": r.source, "sop_instance_uid": None, "reason": r.reason} for r in study.unattributed
        )
        folder, document = write_study_folder(study, args.out)
        analysed_total += sum(1 for i in document["images"] if i["analysed"])
        print(f"{summarize(document)}\n  -> {folder}")
    if unattributed:
        (args.out / UNATTRIBUTED_NAME).write_text(json.dumps(unattributed, indent=2) + "\n", encoding="utf-8")
        for entry in unattributed:
            print(f"{entry['source']}: not analysed: {entry['reason']}")
    if analysed_total == 0:
        logger.error("nothing could be analysed in %d file(s)", len(items))
        sys.exit(1)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main(get_args_parser().parse_args())
