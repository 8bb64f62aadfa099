"""The SR's fast TID 1410 and TID 1501 groups (cxr_service.writers.sr_items) write what highdicom's
template classes write, byte for byte, for random inputs."""

from __future__ import annotations

import io

import highdicom as hd
import numpy as np
import pydicom
import pytest
from cxr_models.records import Box
from pydicom.sr.codedict import codes as dcm_codes
from pydicom.sr.coding import Code
from pydicom.uid import ComputedRadiographyImageStorage, DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian

from cxr_service import codes
from cxr_service.uids import derive_uid
from cxr_service.writers.common import rectangle, skip_item_corrections
from cxr_service.writers.sr_items import GroupBuilder, NumericMeasurement, PlanarGroup, StudyGroup, shared_concept

ALGORITHM = hd.sr.AlgorithmIdentification(
    name="cxr", version="9.9.9", parameters=["lungs model UID 1.2.3"], family=codes.ARTIFICIAL_INTELLIGENCE, manufacturer="cxr"
)
MEASURED = (codes.CERTAINTY_OF_FINDING, codes.OPACITY_PERCENT_OF_LUNG, codes.OOD_SCORE, *codes.VIEW_CODES.values())
UNITS = (codes.UCUM_PROBABILITY, codes.UCUM_PERCENT)


def random_group(rng: np.random.Generator, index: int) -> PlanarGroup:
    x0, y0 = rng.uniform(0, 1500, size=2)
    box = Box(float(x0), float(y0), float(x0 + rng.uniform(1, 500)), float(y0 + rng.uniform(1, 500)))
    views = list(codes.VIEW_CODES.values())
    return PlanarGroup(
        tracking_identifier=f"Opacity {index}, image {rng.integers(1, 9)}",
        tracking_uid=derive_uid(source_uid="1.2.3.4", model_version="9.9.9", kind="tracking/opacity", index=index),
        finding_type=codes.OPACITY if rng.random() < 0.5 else codes.LUNG,
        graphic_data=rectangle(box),
        sop_class_uid=ComputedRadiographyImageStorage if rng.random() < 0.5 else DigitalXRayImageStorageForPresentation,
        sop_instance_uid=f"1.2.826.0.1.{rng.integers(1, 10**12)}",
        finding_sites=(codes.LUNG,) * int(rng.integers(0, 2)),
        measurements=tuple(
            NumericMeasurement(
                name=MEASURED[int(rng.integers(len(MEASURED)))],
                # Scores, percentages and values DS has to round (auto_format).
                value=float(rng.choice([rng.random(), rng.uniform(0, 100), 1.0, 0.0, 1 / 3, 123456.789012345678])),
                unit=UNITS[int(rng.integers(len(UNITS)))],
            )
            for _ in range(int(rng.integers(0, 5)))
        ),
        qualitative_evaluations=tuple((codes.IMAGE_VIEW, views[int(rng.integers(len(views)))]) for _ in range(int(rng.integers(0, 2)))),
    )


def source_header(sop_class_uid: str, sop_instance_uid: str) -> pydicom.Dataset:
    source = pydicom.Dataset()
    source.SOPClassUID, source.SOPInstanceUID = sop_class_uid, sop_instance_uid
    source.Rows = source.Columns = 2048
    source.Modality = "CR"
    return source


def random_study_group(rng: np.random.Generator) -> StudyGroup:
    planar = random_group(rng, 0)
    return StudyGroup(
        tracking_identifier="CXR AI study classification",
        tracking_uid=planar.tracking_uid,
        finding_type=codes.PNEUMONIA,
        source_images=tuple((planar.sop_class_uid, f"1.2.826.0.2.{n}") for n in range(int(rng.integers(1, 4)))),
        measurements=planar.measurements,
        qualitative_evaluations=planar.qualitative_evaluations,
    )


def highdicom_study_group(group: StudyGroup) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(identifier=group.tracking_identifier, uid=group.tracking_uid),
        finding_type=group.finding_type,
        algorithm_id=ALGORITHM,
        measurements=[hd.sr.Measurement(name=m.name, value=m.value, unit=m.unit) for m in group.measurements] or None,
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=n, value=v) for n, v in group.qualitative_evaluations] or None,
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source_header(*uids)) for uids in group.source_images],
    )


def highdicom_group(group: PlanarGroup) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    source = source_header(group.sop_class_uid, group.sop_instance_uid)
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(identifier=group.tracking_identifier, uid=group.tracking_uid),
        referenced_region=hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
            graphic_data=group.graphic_data,
            source_image=hd.sr.SourceImageForRegion.from_source_image(source),
        ),
        finding_type=group.finding_type,
        finding_sites=[hd.sr.FindingSite(anatomic_location=site) for site in group.finding_sites] or None,
        algorithm_id=ALGORITHM,
        measurements=[hd.sr.Measurement(name=m.name, value=m.value, unit=m.unit) for m in group.measurements] or None,
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=n, value=v) for n, v in group.qualitative_evaluations] or None,
    )


def encoded(items: list[pydicom.Dataset]) -> bytes:
    ds = pydicom.Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.ContentSequence = items
    skip_item_corrections(ds)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=False)
    return out.getvalue()


@pytest.mark.parametrize("seed", range(4))
def test_groups_are_highdicoms_byte_for_byte(seed: int) -> None:
    rng = np.random.default_rng(seed)
    groups = [random_group(rng, index) for index in range(12)]
    builder = GroupBuilder(algorithm_items=ALGORITHM)
    fast = [builder.planar_group(group) for group in groups]
    reference = [item for group in groups for item in highdicom_group(group)]
    assert len(reference) == len(fast)
    assert encoded(fast) == encoded(reference)
    # The written groups read back as TID 1410 groups with their values.
    read = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations.from_sequence(fast[:1])
    assert read.tracking_uid == groups[0].tracking_uid and read.finding_type == groups[0].finding_type


@pytest.mark.parametrize("seed", range(4))
def test_study_groups_are_highdicoms_byte_for_byte(seed: int) -> None:
    rng = np.random.default_rng(seed)
    groups = [random_study_group(rng) for _ in range(6)]
    builder = GroupBuilder(algorithm_items=ALGORITHM)
    reference = [item for group in groups for item in highdicom_study_group(group)]
    assert encoded([builder.study_group(group) for group in groups]) == encoded(reference)


def test_group_refuses_bad_values() -> None:
    builder = GroupBuilder(algorithm_items=ALGORITHM)
    group = random_group(np.random.default_rng(0), 1)
    with pytest.raises(ValueError, match="graphic_data"):
        builder.planar_group(PlanarGroup(**{**group.__dict__, "graphic_data": np.zeros(10)}))
    bad = NumericMeasurement(name=codes.CERTAINTY_OF_FINDING, value=1, unit=codes.UCUM_PROBABILITY)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Certainty of Finding"):
        builder.planar_group(PlanarGroup(**{**group.__dict__, "measurements": (bad,)}))


def test_concepts_are_made_once_per_builder() -> None:
    builder = GroupBuilder(algorithm_items=ALGORITHM)
    assert builder.concept(dcm_codes.DCM.Finding) is builder.concept(dcm_codes.DCM.Finding)
    assert builder.concept(codes.LUNG) == hd.sr.CodedConcept.from_code(codes.LUNG)


def test_shared_concepts_are_told_apart_by_every_field() -> None:
    """pydicom's Code equality ignores the meaning (and maps SRT onto SCT): the shared concepts
    are keyed by every field, so no document gets another code's meaning or scheme."""
    one, two = Code("123", "99CXR", "one"), Code("123", "99CXR", "two")
    assert one == two  # pydicom's view
    assert (shared_concept(one).meaning, shared_concept(two).meaning) == ("one", "two")
    assert shared_concept(Code("123", "99CXR", "one")) is shared_concept(one)
    srt, sct = Code("T-28000", "SRT", "Lung"), Code("39607008", "SCT", "Lung")
    assert shared_concept(srt).scheme_designator == "SRT" and shared_concept(sct).scheme_designator == "SCT"
