"""Coded concepts used in the DICOM outputs, as module constants.

Standard codes come first (DCM = DICOM PS3.16, SCT = SNOMED CT, LN = LOINC, UCUM units); each
constant names its source. Where no standard code exists the concept is in the private coding
scheme ``99CXR`` of this project, which every object that uses it declares in its Coding Scheme
Identification Sequence (see :func:`cxr_service.writers.common.cxr_coding_scheme`).

There are no SNOMED CT or RadLex codes for the four appearance categories of the RSNA COVID-19
expert consensus statement (typical / indeterminate / atypical / negative for pneumonia), so they
are 99CXR codes; the disease they qualify is the standard SCT "Pneumonia".
"""

from __future__ import annotations

from types import MappingProxyType

from pydicom.sr.coding import Code

# --- the private coding scheme of this project -------------------------------------------------
CXR_SCHEME_DESIGNATOR = "99CXR"
CXR_SCHEME_NAME = "cxr chest X-ray AI private codes"
CXR_SCHEME_RESPONSIBLE_ORGANIZATION = "cxr open-source project"
CXR_SCHEME_VERSION = "1"

# --- document structure (DICOM PS3.16) ---------------------------------------------------------
# DCM 126000, CID 7021 "Measurement Report Document Titles" (TID 1500 title).
IMAGING_MEASUREMENT_REPORT = Code("126000", "DCM", "Imaging Measurement Report")
# DCM 126010 / 126011, TID 1500 containers.
IMAGING_MEASUREMENTS = Code("126010", "DCM", "Imaging Measurements")
DERIVED_IMAGING_MEASUREMENTS = Code("126011", "DCM", "Derived Imaging Measurements")
# UMLS C0034375, TID 1500 row "Qualitative Evaluations" container.
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")
# DCM 125007, TID 1410/1501 "Measurement Group".
MEASUREMENT_GROUP = Code("125007", "DCM", "Measurement Group")
# SCT 260753009 "Source" (TID 1600 image library entry).
SOURCE = Code("260753009", "SCT", "Source")
# DCM 121112 "Source of Measurement", CID 7551 (image reference for a text evaluation).
SOURCE_OF_MEASUREMENT = Code("121112", "DCM", "Source of Measurement")
# LOINC 18748-4, CID 7000 "Diagnostic Imaging Report" (GSPS / SEG concept name of the content).
DIAGNOSTIC_IMAGING_REPORT = Code("18748-4", "LN", "Diagnostic Imaging Report")
# RFC 5646 "en-US" (TID 1204 language of the report content).
LANGUAGE_EN_US = Code("en-US", "RFC5646", "English (United States)")

# --- procedure, anatomy, findings ----------------------------------------------------------------
# SCT 399208008 "Plain X-ray of chest" (procedure reported, TID 1500).
PLAIN_CHEST_XRAY = Code("399208008", "SCT", "Plain chest X-ray")
# SCT 39607008 "Lung structure", CID 7151/7155 (finding site, SEG segment property type).
LUNG = Code("39607008", "SCT", "Lung")
# SCT 91723000 "Anatomical structure", CID 7150 (SEG segment property category of the lungs).
ANATOMICAL_STRUCTURE = Code("91723000", "SCT", "Anatomical Structure")
# SCT 49755003 "Morphologically abnormal structure", CID 7150 (SEG category of the opacity).
MORPHOLOGICALLY_ABNORMAL_STRUCTURE = Code("49755003", "SCT", "Morphologically Abnormal Structure")
# DCM 112001 "Opacity", CID 6102/6104 "Types of Finding for Chest CAD".
OPACITY = Code("112001", "DCM", "Opacity")
# SCT 233604007 "Pneumonia (disorder)".
PNEUMONIA = Code("233604007", "SCT", "Pneumonia")
# DCM 111012 "Certainty of Finding", CID 6048: the detector's score of an opacity box.
CERTAINTY_OF_FINDING = Code("111012", "DCM", "Certainty of Finding")
# DCM 111031 "Image View": concept name of the AI view classification (its value is the view).
IMAGE_VIEW = Code("111031", "DCM", "Image View")
# SCT 399067008 "Lateral projection", CID 4010 "DX View".
LATERAL_VIEW = Code("399067008", "SCT", "lateral")

# --- triage (the study's reading priority, cxr_service.triage) -------------------------------------
# SCT 260870009 "Priority (attribute)" (in DICOM PS3.16's SNOMED CT list): concept name.
PRIORITY = Code("260870009", "SCT", "Priority")
# SCT 103391001 "Urgent (qualifier value)" (DICOM PS3.16 CID 3414 "Procedure Urgency": "Urgent").
URGENT = Code("103391001", "SCT", "Urgent")
# SCT 394849002 "High priority (qualifier value)", a child of SCT 272125009 "Priorities".
HIGH_PRIORITY = Code("394849002", "SCT", "High priority")
# SCT 50811001 "Routine (qualifier value)", a child of SCT 272125009 "Priorities".
ROUTINE = Code("50811001", "SCT", "Routine")

# --- units (UCUM) --------------------------------------------------------------------------------
# UCUM "%", CID 7181.
UCUM_PERCENT = Code("%", "UCUM", "Percent")
# UCUM "{pixels}" (TID 1602 matrix size).
UCUM_PIXELS = Code("{pixels}", "UCUM", "Pixels")
# UCUM "1" (unity), CID 7181: probabilities and scores in [0, 1], and other dimensionless scores.
UCUM_PROBABILITY = Code("1", "UCUM", "no units")

# --- contributing equipment (IHE AI Results) -----------------------------------------------------
# DCM 109102 "Processing Equipment", CID 7005: the AI algorithm that derived the instance.
PROCESSING_EQUIPMENT = Code("109102", "DCM", "Processing Equipment")
# DCM 123110 "Artificial Intelligence", CID 7162 (algorithm family of SR/SEG algorithm identification).
ARTIFICIAL_INTELLIGENCE = Code("123110", "DCM", "Artificial Intelligence")
# DCM 130401 "Visual explanation" (SEG category of the attribution heatmap) and, for its type,
# DCM 130404 "Saliency" (Integrated Gradients) or 130403 "Gradient-weighted class activation"
# (Grad-CAM), PS3.16 CID 217 "Visual Explanation".
VISUAL_EXPLANATION = Code("130401", "DCM", "Visual explanation")
SALIENCY = Code("130404", "DCM", "Saliency")
GRADIENT_WEIGHTED_CLASS_ACTIVATION = Code("130403", "DCM", "Gradient-weighted class activation")

# --- 99CXR private codes (no standard code exists) ---------------------------------------------
# 99CXR: the RSNA COVID-19 appearance classification of the study (concept name).
COVID_APPEARANCE = Code("CXR001", CXR_SCHEME_DESIGNATOR, "RSNA COVID-19 pneumonia appearance")
# 99CXR: the four RSNA COVID-19 appearance categories (values; also NUM names of their probability).
NEGATIVE_FOR_PNEUMONIA = Code("CXR002", CXR_SCHEME_DESIGNATOR, "Negative for pneumonia")
TYPICAL_APPEARANCE = Code("CXR003", CXR_SCHEME_DESIGNATOR, "Typical appearance")
INDETERMINATE_APPEARANCE = Code("CXR004", CXR_SCHEME_DESIGNATOR, "Indeterminate appearance")
ATYPICAL_APPEARANCE = Code("CXR005", CXR_SCHEME_DESIGNATOR, "Atypical appearance")
# 99CXR: fraction of the lung area covered by the opacity mask, in percent.
OPACITY_PERCENT_OF_LUNG = Code("CXR006", CXR_SCHEME_DESIGNATOR, "Opacity percent of lung area")
# 99CXR: the AI view classification values for which DICOM has no code.
FRONTAL_VIEW = Code("CXR007", CXR_SCHEME_DESIGNATOR, "Frontal (PA or AP)")
OTHER_VIEW = Code("CXR008", CXR_SCHEME_DESIGNATOR, "Other view or not a chest radiograph")
# 99CXR: an image of the study that the algorithm did not analyse (TEXT value: the reason).
NOT_ANALYSED = Code("CXR009", CXR_SCHEME_DESIGNATOR, "Not analysed")
# 99CXR: statement that the results come from demonstration weights.
DEMO_WEIGHTS = Code("CXR010", CXR_SCHEME_DESIGNATOR, "Demo weights - not for clinical use")
# 99CXR: how unlike the training images an analysed image is (cxr_models.inference.ood:
# sqrt(Mahalanobis^2 / D) of its view-network features; about 1 for training images, UCUM "1").
OOD_SCORE = Code("CXR011", CXR_SCHEME_DESIGNATOR, "Out-of-distribution score")
# 99CXR: the triage value of a study none of whose images could be analysed (no SNOMED CT
# priority says "not assessed").
TRIAGE_UNASSESSED = Code("CXR012", CXR_SCHEME_DESIGNATOR, "Not assessed: no image analysed")

# --- lookups by the label strings of cxr_models.records ------------------------------------------
# The view and category codes are also the concept names of the NUM items holding their
# probability (UCUM "1") in the SR.
STUDY_LABEL_CODES = MappingProxyType(
    {
        "negative": NEGATIVE_FOR_PNEUMONIA,
        "typical": TYPICAL_APPEARANCE,
        "indeterminate": INDETERMINATE_APPEARANCE,
        "atypical": ATYPICAL_APPEARANCE,
    }
)
VIEW_CODES = MappingProxyType({"frontal": FRONTAL_VIEW, "lateral": LATERAL_VIEW, "other": OTHER_VIEW})
# Triage priority (cxr_service.triage.Priority values) → the SR's coded value of SCT "Priority".
TRIAGE_CODES = MappingProxyType(
    {"urgent": URGENT, "priority": HIGH_PRIORITY, "unassessed": TRIAGE_UNASSESSED, "routine": ROUTINE}
)
