"""Coded concepts the SR uses: standard codes where DICOM/SNOMED CT have one, else 99PACSNODE.

Private codes (scheme 99PACSNODE) are used only where no standard concept fits (circularity, a
generic mean pixel intensity, class names without a model-card code); DICOM allows local schemes.
"""

from __future__ import annotations

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from core.domain import CodedConcept, Severity
from pipelines.contract import ClassificationOutput, PipelineResult

PRIVATE_SCHEME = "99PACSNODE"

AREA = codes.SCT.Area
VOLUME = codes.SCT.Volume
SQUARE_MM = codes.UCUM.SquareMillimeter
CUBIC_MM = codes.UCUM.CubicMillimeter
NO_UNITS = codes.UCUM.NoUnits
HOUNSFIELD = codes.UCUM.HounsfieldUnit
ARBITRARY_UNIT = codes.UCUM.ArbitraryUnit
MEAN = codes.SCT.Mean
PROBABILITY = codes.DCM.Probability
SEVERITY = codes.SCT.Severity
FINDING = codes.DCM.Finding
CAD_SUMMARY = codes.DCM.CADProcessingAndFindingsSummary
# TID 1500 row 12 (document-level qualitative evaluations); not in pydicom's code dictionary
QUALITATIVE_EVALUATIONS = hd.sr.CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")
WITH_FINDINGS = codes.DCM.AllAlgorithmsSucceededWithFindings
WITHOUT_FINDINGS = codes.DCM.AllAlgorithmsSucceededWithoutFindings
IMPRESSION = codes.DCM.Impression
KEY_IMAGES = codes.DCM.KeyImages
COMMENT = codes.DCM.Comment
CIRCULARITY = hd.sr.CodedConcept("circularity", PRIVATE_SCHEME, "Circularity")
MEAN_INTENSITY = hd.sr.CodedConcept("mean-intensity", PRIVATE_SCHEME, "Mean pixel intensity")
CLASSIFICATION_RESULT = hd.sr.CodedConcept(
    "classification", PRIVATE_SCHEME, "AI classification result"
)
# the anomaly task: no standard code names an unsupervised anomaly score or its threshold
# (code values stay within 16 characters: longer ones become LongCodeValue)
ANOMALY_FINDING = hd.sr.CodedConcept("image-anomaly", PRIVATE_SCHEME, "Image anomaly")
ANOMALY_SCORE = hd.sr.CodedConcept("anomaly-score", PRIVATE_SCHEME, "Anomaly score")
ANOMALY_THRESHOLD = hd.sr.CodedConcept("anomaly-thresh", PRIVATE_SCHEME, "Anomaly score threshold")
ANOMALY_RESULT = hd.sr.CodedConcept("anomaly-result", PRIVATE_SCHEME, "AI anomaly detection result")
ANOMALY_VALUES = {True: codes.SCT.Abnormal, False: codes.SCT.Normal}
# the enhancement task: no standard code names an image-estimated noise σ before/after denoising
ENHANCEMENT_FINDING = hd.sr.CodedConcept("image-denoising", PRIVATE_SCHEME, "Image noise reduction")
NOISE_SIGMA_BEFORE = hd.sr.CodedConcept(
    "noise-sd-source", PRIVATE_SCHEME, "Estimated noise standard deviation of the source"
)
NOISE_SIGMA_AFTER = hd.sr.CodedConcept(
    "noise-sd-denoise", PRIVATE_SCHEME, "Estimated noise standard deviation after denoising"
)
SEVERITY_VALUES = {
    Severity.LOW: codes.SCT.Mild,
    Severity.MODERATE: codes.SCT.Moderate,
    Severity.HIGH: codes.SCT.Severe,
}

# Procedure reported: TID 1500 takes it from CID 100 (Quantitative Diagnostic Imaging Procedures);
# validators reject other codes, so a source procedure code outside CID 100 is not copied.
_CID100 = codes.cid100
PROCEDURE_CODES = {
    (code.value, code.scheme_designator)
    for code in (getattr(_CID100, name) for name in _CID100.dir())
}
_PROCEDURE_BY_MODALITY = {
    "CT": _CID100.CTUnspecifiedBodyRegion,
    "MR": _CID100.MRIUnspecifiedBodyRegion,
    "CR": _CID100.ImagingProcedure,  # pixelmed's CID 100 lacks the LOINC XR code
    "DX": _CID100.ImagingProcedure,
    "PT": _CID100.PETUnspecifiedBodyRegion,
    "NM": _CID100.NMUnspecifiedBodyRegion,
}
_IMAGING_PROCEDURE = _CID100.ImagingProcedure


def private_scheme_identification() -> Dataset:
    """The CodingSchemeIdentificationSequence item that says what 99PACSNODE is (PS3.3 C.12.1)."""
    item = Dataset()
    item.CodingSchemeDesignator = PRIVATE_SCHEME
    item.CodingSchemeName = "pacsnode private codes"
    item.CodingSchemeResponsibleOrganization = "pacsnode project"
    return item


def coded(concept: CodedConcept) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(concept.value, concept.scheme_designator, concept.meaning)


def procedure_for_modality(modality: str) -> hd.sr.CodedConcept:
    return _PROCEDURE_BY_MODALITY.get(modality.upper(), _IMAGING_PROCEDURE)


def class_concept(classification: ClassificationOutput, name: str) -> hd.sr.CodedConcept:
    """The model card's code for a class, or a private code naming it."""
    index = classification.classes.index(name)
    if index < len(classification.class_codes):
        return coded(classification.class_codes[index])
    return hd.sr.CodedConcept(name[:16], PRIVATE_SCHEME, name[:64])


def intensity_concept(modality: str, unit: str) -> tuple[hd.sr.CodedConcept, hd.sr.CodedConcept]:
    """(concept name, unit) for a finding's mean intensity."""
    if unit == "HU" or modality.upper() == "CT":
        return codes.DCM.MeanAttenuationCoefficient, HOUNSFIELD
    if modality.upper() == "MR":
        return codes.DCM.MRSignalIntensity, ARBITRARY_UNIT
    return MEAN_INTENSITY, ARBITRARY_UNIT


def cad_summary(result: PipelineResult) -> hd.sr.CodedConcept:
    """CID 6047 study summary by the conclusion rule: "with findings" when a finding was found
    *or* the classifier's decision is its positive class, so the code never contradicts the
    classification result beside it (the Impression text says which)."""
    cls = result.classification
    suspicious = cls is not None and cls.decision == cls.positive_class
    return WITH_FINDINGS if result.has_findings or suspicious else WITHOUT_FINDINGS  # type: ignore[no-any-return]
