"""``POST /v1/analyze``: analyse uploaded DICOM files now and answer with result.json.

For ad-hoc use without a PACS. The files must belong to one study; the outputs are not stored
anywhere (the result is kept for ``GET /v1/studies/{uid}/result``).
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, File, UploadFile
from starlette.concurrency import run_in_threadpool

from cxr_service.api.deps import Authorized, EngineDep, QueueDep
from cxr_service.api.problems import Problem
from cxr_service.ingest import NO_STUDY_KEY, IngestResult, group_by_study, ingest_bytes
from cxr_service.outputs import build_outputs, result_document

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", tags=["analyze"], dependencies=[Authorized])

MAX_FILES = 64


@router.post(
    "/analyze",
    summary="Analyse uploaded DICOM files of one study (multipart field `files`, repeatable)",
    responses={
        401: {"description": "missing or wrong bearer token"},
        413: {"description": "upload over CXR_MAX_UPLOAD_BYTES"},
        422: {"description": "no analysable study in the upload (problem+json lists the reasons)"},
    },
)
async def analyze_upload(
    files: Annotated[list[UploadFile], File(description="DICOM Part 10 files of one study")],
    engine: EngineDep,
    queue: QueueDep,
) -> dict[str, Any]:
    if not files:
        raise Problem(422, "files: at least one DICOM file is required")
    if len(files) > MAX_FILES:
        raise Problem(422, f"files: at most {MAX_FILES} files per request, got {len(files)}")
    items: list[IngestResult] = []
    for index, upload in enumerate(files):
        data = await upload.read()
        source = f"files[{index}]"
        items.append(await run_in_threadpool(ingest_bytes, data, source=source, limits=engine.limits))
    groups = group_by_study(items)
    unattributed = groups.pop(NO_STUDY_KEY, [])
    if not groups:
        reasons = [{"file": r.source, "reason": r.reason} for r in unattributed]
        raise Problem(422, "no file could be attributed to a study: " + "; ".join(f"{r['file']}: {r['reason']}" for r in reasons), files=reasons)
    if len(groups) > 1:
        raise Problem(422, f"files: the upload holds {len(groups)} studies; send one study per request")
    (study_uid, study_items), = groups.items()

    def run() -> dict[str, Any]:
        study = engine.analyze(study_items, study_instance_uid=study_uid)
        datasets, writers_ms = build_outputs(study)
        return result_document(study, datasets, writers_ms=writers_ms)

    document = await run_in_threadpool(run)
    document["not_attributed"] = [{"file": r.source, "reason": r.reason} for r in unattributed]
    document["delivered_to"] = None  # the outputs of an upload are not stored anywhere
    await run_in_threadpool(queue.store.put_result, document=document, job_id="upload")
    return document
