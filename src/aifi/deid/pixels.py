"""Clean Pixel Data Option (PS3.15 E.3.1): which images may carry burned-in text.

aifi does not scrub pixels; it refuses an image that has or may have text
burned into it. Burned In Annotation (0028,0301) YES and Recognizable Visual
Features (0028,0302) YES are always refused. Otherwise the SOP class and the
modality are judged first: secondary capture, ultrasound, X-ray angiography
and fluoroscopy, endoscopy, photographs, encapsulated documents and screen
captures are refused unless the hospital declared the source's images clean,
whatever the flag says (a modality that writes NO on a screenshot is not
believed). The flag is judged second, for the classes it can vouch for.
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
    "1.2.840.10008.5.1.4.1.1.12.1": "X-Ray Angiographic Image",
    "1.2.840.10008.5.1.4.1.1.12.1.1": "Enhanced XA Image",
    "1.2.840.10008.5.1.4.1.1.12.2": "X-Ray Radiofluoroscopic Image",
    "1.2.840.10008.5.1.4.1.1.12.2.1": "Enhanced XRF Image",
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
_SUSPECT_MODALITIES = {
    "US", "SC", "OT", "XC", "ES", "GM", "DOC", "IVUS", "OP", "OPT", "XA", "RF", "SM", "IO",
}  # fmt: skip


def burned_in_text_reason(ds: Mapping[str, str], *, known_clean: bool = False) -> str | None:
    """Why an instance may carry burned-in text (a sentence naming attributes), or None.

    ``ds`` maps keywords (BurnedInAnnotation, RecognizableVisualFeatures,
    SOPClassUID, Modality, and EmbeddedOverlay = YES when an overlay lives in
    the pixel data's unused bits) to their values. ``known_clean``: the
    hospital declared this source's images free of burned-in text; the YES
    flags are refused even then.
    """
    burned = str(ds.get("BurnedInAnnotation", "") or "").strip().upper()
    if burned == "YES":
        return (
            "Burned In Annotation (0028,0301) is YES: the pixels carry text that may "
            "identify the patient; send a version without annotations"
        )
    if str(ds.get("RecognizableVisualFeatures", "") or "").strip().upper() == "YES":
        return (
            "Recognizable Visual Features (0028,0302) is YES: the image may show the "
            "patient's face; it is not sent"
        )
    if known_clean:
        return None
    if ds.get("EmbeddedOverlay") == "YES":
        return (
            "an overlay is embedded in unused bits of Pixel Data (retired, PS3.5 8.1.2); it "
            "may hold text and cannot be removed without decoding the pixels; configure the "
            "source as known-clean if its overlays carry no identifying text"
        )
    sop_class = str(ds.get("SOPClassUID", "") or "")
    if sop_class in _SUSPECT_SOP_CLASSES:
        return (
            f"SOP class {_SUSPECT_SOP_CLASSES[sop_class]} often carries burned-in text, "
            "whatever Burned In Annotation (0028,0301) says; configure the source as "
            "known-clean if its images carry no identifying text"
        )
    modality = str(ds.get("Modality", "") or "").strip().upper()
    if modality in _SUSPECT_MODALITIES:
        return (
            f"modality {modality} often carries burned-in text, whatever Burned In "
            "Annotation (0028,0301) says; configure the source as known-clean if its "
            "images carry no identifying text"
        )
    return None
