"""Defined and enumerated terms of coded strings that are kept (PS3.3).

A safe-listed CS attribute is copied only when its value has the form of
CS (upper case, digits, space, underscore, 16 characters). That form alone
lets an invented value through — a Modality of ``DUP0004`` or a name in
capitals. For the attributes below the Standard lists the values: a value
outside the list is not copied (engine) and not accepted (hub check). The
edge and the hub read the same table.
"""

from __future__ import annotations

import pydicom.charset

__all__ = ["DEFINED_TERMS", "is_defined_term"]

_MODALITIES = """
ANN AR ASMT AU BDUS BI BMD CFM CR CT CTPROTOCOL DMS DG DOC DX ECG EEG EMG EOG EPS ES FID GM HC
HD IO IOL IVOCT IVUS KER KO LEN LS MG MR M3D NM OAM OCT OP OPM OPT OPTBSV OPTENF OPV OSS OT PA
PLAN POS PR PT PX REG RESP RF RG RTDOSE RTIMAGE RTINTENT RTPLAN RTRAD RTRECORD RTSEGANN RTSTRUCT
RWV SEG SM SMR SR SRF STAIN TEXTUREMAP TG US VA XA XAPROTOCOL XC
AS CD CF CP CS DD DF DM DS EC FA FS LP MA MS OPR ST VF
"""  # PS3.3 C.7.3.1.1.1, the retired terms on the last line

#: Keyword → the values PS3.3 allows (each value of a multi-valued element).
DEFINED_TERMS: dict[str, frozenset[str]] = {
    "Modality": frozenset(_MODALITIES.split()),  # C.7.3.1.1.1
    "PhotometricInterpretation": frozenset(  # C.7.6.3.1.2
        (
            "MONOCHROME1",
            "MONOCHROME2",
            "PALETTE COLOR",
            "RGB",
            "HSV",
            "ARGB",
            "CMYK",
            "YBR_FULL",
            "YBR_FULL_422",
            "YBR_PARTIAL_422",
            "YBR_PARTIAL_420",
            "YBR_ICT",
            "YBR_RCT",
        )
    ),
    "PatientPosition": frozenset(  # C.7.3.1.1.2
        "HFP HFS HFDR HFDL FFDR FFDL FFP FFS LFP LFS RFP RFS AFDR AFDL PFDR PFDL SITTING".split()  # noqa: SIM905
    ),
    "ImageLaterality": frozenset(["R", "L", "U", "B"]),  # C.8.19.6.1
    "Laterality": frozenset(["R", "L"]),  # C.7.3.1
    "ViewPosition": frozenset(["AP", "PA", "LL", "RL", "RLD", "LLD", "RLO", "LLO"]),  # C.8.11.5.1.1
    "BurnedInAnnotation": frozenset(["YES", "NO"]),
    "RecognizableVisualFeatures": frozenset(["YES", "NO"]),
    "LossyImageCompression": frozenset(["00", "01"]),  # C.7.6.1.1.5
    "PresentationIntentType": frozenset(["FOR PRESENTATION", "FOR PROCESSING"]),
    "PresentationLUTShape": frozenset(["IDENTITY", "INVERSE"]),
    "PixelIntensityRelationship": frozenset(["LIN", "LOG", "DISP"]),
    "ConversionType": frozenset(["DV", "DI", "DF", "VIDEO_CAP", "WSD", "SD", "SI", "DRW", "SYN"]),
    "RotationDirection": frozenset(["CW", "CC"]),
    "FieldOfViewShape": frozenset(["RECTANGLE", "ROUND", "HEXAGONAL"]),
    "VOILUTFunction": frozenset(["LINEAR", "LINEAR_EXACT", "SIGMOID"]),
    "MRAcquisitionType": frozenset(["2D", "3D"]),
    "RadiationSetting": frozenset(["SC", "GR"]),
    "SpecificCharacterSet": frozenset(pydicom.charset.python_encoding),
}


def is_defined_term(keyword: str, value: str) -> bool:
    """Whether each value of ``value`` is a term PS3.3 allows for ``keyword``.

    True for attributes without a table here (their form is checked
    elsewhere) and for empty values.
    """
    terms = DEFINED_TERMS.get(keyword)
    if terms is None:
        return True
    return all(not v.strip() or v.strip() in terms for v in value.split("\\"))
