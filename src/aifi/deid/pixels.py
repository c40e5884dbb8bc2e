"""Clean Pixel Data Option (PS3.15 E.3.1): which images may carry burned-in text.

aifi does not scrub pixels; it refuses an image that has or may have text
burned into it, unless the hospital configured the source as known-clean.
An image is suspect when Burned In Annotation (0028,0301) is YES, when
Recognizable Visual Features (0028,0302) is YES, or, absent an explicit NO,
when its SOP class or modality is one known for screen captures and
annotated images (secondary capture, ultrasound, endoscopy, photographs,
encapsulated documents, dose screens).
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["burned_in_text_reason"]

#: SOP classes that commonly carry burned-in text (PS3.4 Annex B).
_SUSPECT_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image",
    "1.2.840.10008.5.1.4.1.1.7.1": "Multi-frame Single Bit Secondary Capture",
    "1.2.840.10008.5.1.4.1.1.7.2": "Multi-frame Grayscale Byte Secondary Capture",
    "1.2.840.10008.5.1.4.1.1.7.3": "Multi-frame Grayscale Word Secondary Capture",
    "1.2.840.10008.5.1.4.1.1.7.4": "Multi-frame True Color Secondary Capture",
    "1.2.840.10008.5.1.4.1.1.6.1": "Ultrasound Image",
    "1.2.840.10008.5.1.4.1.1.6.2": "Enhanced US Volume",
    "1.2.840.10008.5.1.4.1.1.3.1": "Ultrasound Multi-frame Image",
    "1.2.840.10008.5.1.4.1.1.77.1.1": "VL Endoscopic Image",
    "1.2.840.10008.5.1.4.1.1.77.1.1.1": "Video Endoscopic Image",
    "1.2.840.10008.5.1.4.1.1.77.1.4": "VL Photographic Image",
    "1.2.840.10008.5.1.4.1.1.77.1.4.1": "Video Photographic Image",
    "1.2.840.10008.5.1.4.1.1.104.1": "Encapsulated PDF",
    "1.2.840.10008.5.1.4.1.1.104.2": "Encapsulated CDA",
}
#: Modalities (PS3.3 C.7.3.1.1.1) whose images commonly carry burned-in text.
_SUSPECT_MODALITIES = {"US", "SC", "OT", "XC", "ES", "GM", "DOC", "IVUS", "OP", "OPT"}


def burned_in_text_reason(ds: Mapping[str, str]) -> str | None:
    """Why an instance may carry burned-in text (a sentence naming attributes), or None.

    ``ds`` maps keywords (BurnedInAnnotation, RecognizableVisualFeatures,
    SOPClassUID, Modality, and EmbeddedOverlay = YES when an overlay lives in
    the pixel data's unused bits) to their values.
    """
    if ds.get("EmbeddedOverlay") == "YES":
        return (
            "an overlay is embedded in unused bits of Pixel Data (retired, PS3.5 8.1.2); it "
            "may hold text and cannot be removed without decoding the pixels; configure the "
            "source as known-clean if its overlays carry no identifying text"
        )
    burned = str(ds.get("BurnedInAnnotation", "") or "").strip().upper()
    if burned == "YES":
        return (
            "Burned In Annotation (0028,0301) is YES: the pixels carry text that may "
            "identify the patient; send a version without annotations, or mark this "
            "source as known-clean if its text is not identifying"
        )
    if str(ds.get("RecognizableVisualFeatures", "") or "").strip().upper() == "YES":
        return (
            "Recognizable Visual Features (0028,0302) is YES: the image may show the "
            "patient's face; it is not sent"
        )
    if burned == "NO":
        return None
    sop_class = str(ds.get("SOPClassUID", "") or "")
    if sop_class in _SUSPECT_SOP_CLASSES:
        return (
            f"SOP class {_SUSPECT_SOP_CLASSES[sop_class]} often carries burned-in text "
            "and Burned In Annotation (0028,0301) is not NO; configure the source as "
            "known-clean if its images carry no identifying text"
        )
    modality = str(ds.get("Modality", "") or "").strip().upper()
    if modality in _SUSPECT_MODALITIES:
        return (
            f"modality {modality} often carries burned-in text and Burned In Annotation "
            "(0028,0301) is not NO; configure the source as known-clean if its images "
            "carry no identifying text"
        )
    return None
