"""``POST /v1/analyze``: analyse uploaded DICOM files now and answer with result.json.

For ad-hoc use without a PACS. The files must belong to one study; they take the path every
door takes (:func:`cxr_service.pipeline.run_study`) with their outputs stored nowhere. The
result is kept as the study's *upload* result: ``GET /v1/studies/{uid}/result`` serves it only
while no job has analysed the study, and it never replaces a job's result (whose outputs are in
the PACS), nor makes a later job skip the study.

One study is one patient's (:mod:`cxr_service.patients`): files of two Patient IDs under one
StudyInstanceUID are refused with ``422`` naming ``files`` (which file differs from which), as
files of two studies are; nothing is analysed then.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, File, UploadFile
from starlette.concurrency import run_in_threadpool

from cxr_service.api.deps import Authorized, EngineDep, QueueDep
from cxr_service.api.problems import Problem
from cxr_service.ingest import IngestedImage, Rejected
from cxr_service.patients import MixedPatients, patient_of, single_patient
from cxr_service.pipeline import InstanceSource, Nowhere, Requester, StudyInstance, StudyRequest, ingest_instance, run_study, unattributed_entry

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
    instances: list[StudyInstance] = []
    for index, upload in enumerate(files):
        source = InstanceSource(label=f"files[{index}]", data=await upload.read())
        instances.append(await run_in_threadpool(ingest_instance, source, limits=engine.limits))
    studies: dict[str, list[StudyInstance]] = {}
    orphans: list[Rejected] = []
    for instance in instances:
        uid = instance.item.study_instance_uid
        if uid:
            studies.setdefault(uid, []).append(instance)
        else:
            assert isinstance(instance.item, Rejected)  # an ingested image always has its study
            orphans.append(instance.item)
    if not studies:
        entries = [unattributed_entry(r) for r in orphans]
        detail = "; ".join(f"{e['source']}: {e['reason']}" for e in entries)
        raise Problem(422, f"no file could be attributed to a study: {detail}", files=entries)
    if len(studies) > 1:
        raise Problem(422, f"files: the upload holds {len(studies)} studies; send one study per request")
    ((study_uid, study_instances),) = studies.items()
    patients = [
        (f"files[{index}]", patient_of(i.item.dataset if isinstance(i.item, IngestedImage) else i.header))
        for index, i in enumerate(instances)
        if i.item.study_instance_uid == study_uid
    ]
    try:
        single_patient(patients, study_instance_uid=study_uid)
    except MixedPatients as exc:
        raise Problem(422, f"files: {exc}; send one patient's study per request") from exc
    request = StudyRequest(study_instance_uid=study_uid, requester=Requester.UPLOAD, destination=Nowhere())
    run = await run_in_threadpool(
        run_study, request, study_instances, engine=engine, store=queue.store, not_attributed=orphans
    )
    return dict(run.document)
