"""What heatmaps cost: ms per analysed image for the attribution and for writing the heatmap SEGs,
against the analysis time of the same studies without heatmaps.

    .venv/bin/python bench/heatmap_cost.py DICOM_FOLDER [--studies N] [--repeat R] [--device cpu] [--json OUT]

For each study (instances grouped by StudyInstanceUID, in path order): ingest, then the models
and the writers with heatmaps off (the analysis time: ingest + models + writers), the
attribution stage of the models with heatmaps on (``CXR_HEATMAPS=true``) and the heatmap SEG
writer alone; each is run ``--repeat`` times and the fastest run kept, so other load on the
machine inflates the numbers less (the first study is run once more before, untimed, to warm up). Prints per-image medians and the ratio (attribution +
heatmap writing) / analysis time; ``--json`` writes them with the per-study rows.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "service"), str(REPO / "models")]

from cxr_service.analysis import report_min_score  # noqa: E402
from cxr_service.engine import AnalysisEngine  # noqa: E402
from cxr_service.heatmaps import HeatmapOptions  # noqa: E402
from cxr_service.ingest import iter_dicom_paths  # noqa: E402
from cxr_service.outputs import build_outputs  # noqa: E402
from cxr_service.pipeline import InstanceSource, ingest_instance  # noqa: E402
from cxr_service.writers.common import creation_datetime  # noqa: E402
from cxr_service.writers.heatmap import heatmap_segs_for_image  # noqa: E402
from cxr_service.writers.sources import writable_sources  # noqa: E402


def studies_of(folder: Path, limit: int) -> list[list[Path]]:
    import pydicom

    groups: dict[str, list[Path]] = {}
    for path in iter_dicom_paths([folder]):
        uid = str(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["StudyInstanceUID"]).StudyInstanceUID)
        groups.setdefault(uid, []).append(path)
    return list(groups.values())[:limit]


def fastest(runs: int, fn):  # noqa: ANN001, ANN201 - a tiny timing helper
    best, value = float("inf"), None
    for _ in range(runs):
        start = time.perf_counter()
        value = fn()
        best = min(best, (time.perf_counter() - start) * 1000.0)
    return best, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--studies", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    off = AnalysisEngine.create(weights_dir=None, device=args.device, min_score=None, max_pixels=64_000_000)
    on = AnalysisEngine(
        off.analyzer,
        min_score=report_min_score(off.analyzer.manifest),
        limits=off.limits,
        heatmaps=HeatmapOptions(seg=True),
    )
    rows = []
    studies = studies_of(args.folder, args.studies)
    for paths in studies[:1]:  # warm-up, untimed
        warm = [ingest_instance(InstanceSource(label=p.name, path=p), limits=off.limits).item for p in paths]
        build_outputs(on.analyze(warm, study_instance_uid=str(warm[0].study_instance_uid)))
    for paths in studies:
        ingest_ms, instances = fastest(
            args.repeat, lambda: [ingest_instance(InstanceSource(label=p.name, path=p), limits=off.limits) for p in paths]
        )
        items = [i.item for i in instances]
        uid = str(items[0].study_instance_uid)
        models_off_ms, study_off = fastest(args.repeat, lambda: off.analyze(items, study_instance_uid=uid))
        analysed = len(study_off.result.analysed_images)
        if not analysed:
            continue
        writers_off_ms, _ = fastest(args.repeat, lambda: build_outputs(study_off))
        runs = [on.analyze(items, study_instance_uid=uid) for _ in range(args.repeat)]
        attribution_ms = min(r.result.timings_ms["attribution"] for r in runs)
        study_on = runs[-1]
        checked = writable_sources(study_on.headers)
        created = creation_datetime(checked)
        heatmap_ms, segs = fastest(
            args.repeat,
            lambda: [ds for image in study_on.result.analysed_images for ds in heatmap_segs_for_image(study_on.result, image, checked, created=created)],
        )
        pixels = sum(int(study_on.sources[i.sop_instance_uid].Rows) * int(study_on.sources[i.sop_instance_uid].Columns)
                     for i in study_on.result.analysed_images)  # fmt: skip
        rows.append(
            {
                "study": uid,
                "images": len(items),
                "analysed": analysed,
                "megapixels_per_analysed_image": round(pixels / analysed / 1e6, 3),
                "analysis_ms": round(ingest_ms + models_off_ms + writers_off_ms, 1),
                "ingest_ms": round(ingest_ms, 1),
                "models_ms": round(models_off_ms, 1),
                "writers_ms": round(writers_off_ms, 1),
                "attribution_ms": round(attribution_ms, 1),
                "heatmap_writing_ms": round(heatmap_ms, 1),
                "heatmap_segs": len(segs),
            }
        )
        print(json.dumps(rows[-1]), flush=True)

    def per_image(key: str) -> float:
        return statistics.median(r[key] / r["analysed"] for r in rows)

    summary = {
        key: round(per_image(key), 1)
        for key in ("analysis_ms", "ingest_ms", "models_ms", "writers_ms", "attribution_ms", "heatmap_writing_ms")
    }
    total_analysis = sum(r["analysis_ms"] for r in rows)
    total_cost = sum(r["attribution_ms"] + r["heatmap_writing_ms"] for r in rows)
    summary.update(
        studies=len(rows),
        analysed_images=sum(r["analysed"] for r in rows),
        megapixels_per_analysed_image=round(statistics.median(r["megapixels_per_analysed_image"] for r in rows), 3),
        cost_over_analysis=round(total_cost / total_analysis, 3),
        cost_over_models=round(total_cost / sum(r["models_ms"] for r in rows), 3),
    )
    print("per analysed image (median ms):", json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "studies": rows}, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
