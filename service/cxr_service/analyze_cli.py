"""``cxr analyze PATH... --out DIR``: analyse DICOM files or folders, one result folder per study.

Instances are grouped into studies by StudyInstanceUID and each study takes the path every door
takes (:func:`cxr_service.pipeline.run_study`, destination a folder). Per-image problems are
reported in each study's result; files that belong to no study are listed in
``not_analysed.json``. A StudyInstanceUID whose files belong to two patients is not analysed
(an output never mixes patients, :mod:`cxr_service.patients`): its files are listed in
``not_analysed.json`` with the reason. The exit status is non-zero only when nothing at all could
be analysed.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from cxr_service.analysis import REPORT_MIN_SCORE
from cxr_service.engine import AnalysisEngine
from cxr_service.heatmaps import SC_LAYERS, HeatmapOptions
from cxr_service.ingest import IngestLimits, iter_dicom_paths
from cxr_service.outputs import safe_uid_component, summarize
from cxr_service.patients import MixedPatients
from cxr_service.pipeline import Folder, InstanceSource, Requester, StudyInstance, StudyRequest, ingest_instance, run_study, unattributed_entry

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
    parser.add_argument("--heatmaps", action="store_true", help="also write the heatmap SEGs (as CXR_HEATMAPS=true)")
    parser.add_argument(
        "--sc-heatmap", choices=SC_LAYERS, default="none", help="heatmap blended into the Secondary Capture (as CXR_SC_HEATMAP)"
    )
    return parser


def group_instances(instances: list[StudyInstance]) -> tuple[dict[str, list[StudyInstance]], list[StudyInstance]]:
    """StudyInstanceUID → its instances (first-seen order), and the instances of no study."""
    studies: dict[str, list[StudyInstance]] = {}
    orphans: list[StudyInstance] = []
    for instance in instances:
        uid = instance.item.study_instance_uid
        if uid:
            studies.setdefault(uid, []).append(instance)
        else:
            orphans.append(instance)
    return studies, orphans


def main(args: argparse.Namespace) -> None:
    engine = AnalysisEngine.create(
        weights_dir=args.weights,
        device=args.device,
        min_score=args.min_score,
        max_pixels=args.max_pixels,
        heatmaps=HeatmapOptions(seg=args.heatmaps, sc_layer=args.sc_heatmap),
    )
    start = time.perf_counter()
    instances = [ingest_instance(InstanceSource(label=p.name, path=p), limits=engine.limits) for p in iter_dicom_paths(args.paths)]
    ingest_ms = (time.perf_counter() - start) * 1000.0
    studies, orphans = group_instances(instances)
    args.out.mkdir(parents=True, exist_ok=True)
    unattributed = [unattributed_entry(o.item) for o in orphans]  # type: ignore[arg-type]
    n_images = max(1, len(instances))
    analysed_total = 0
    destination = Folder(args.out)
    for study_uid, study_instances in studies.items():
        request = StudyRequest(study_instance_uid=study_uid, requester=Requester.CLI, destination=destination)
        share = {"ingest": ingest_ms * len(study_instances) / n_images}
        try:
            run = run_study(request, study_instances, engine=engine, timings_ms=share)
        except MixedPatients as exc:
            logger.error("%s", exc)
            print(f"{study_uid}: not analysed: {exc}")
            unattributed += [
                {"source": getattr(i.item, "source", None) or i.item.sop_instance_uid, "sop_instance_uid": i.item.sop_instance_uid, "reason": str(exc)}
                for i in study_instances
            ]
            continue
        analysed_total += run.analysed
        print(f"{summarize(run.document)}\n  -> {args.out / safe_uid_component(study_uid)}")
    if unattributed:
        (args.out / UNATTRIBUTED_NAME).write_text(json.dumps(unattributed, indent=2) + "\n", encoding="utf-8")
        for entry in unattributed:
            print(f"{entry['source']}: not analysed: {entry['reason']}")
    if analysed_total == 0:
        logger.error("nothing could be analysed in %d file(s)", len(instances))
        sys.exit(1)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main(get_args_parser().parse_args())
