"""Clean Pixel Data: an image that has or may have burned-in text is not sent, with a reason."""

from __future__ import annotations

from pathlib import Path

import pytest
from deid_support import KEY, make_instance, write
from pydicom.dataset import Dataset

from aifi.deid import DeidOptions, Pseudonymizer
from aifi.errors import PseudonymizationError


def test_burned_in_annotation_yes_is_refused_and_nothing_written(
    tmp_path: Path, instance: Dataset
) -> None:
    instance.BurnedInAnnotation = "YES"
    src = write(instance, tmp_path / "in.dcm")
    with pytest.raises(PseudonymizationError, match=r"Burned In Annotation \(0028,0301\) is YES"):
        Pseudonymizer(KEY).pseudonymize_file(src, tmp_path / "out.dcm")
    assert list(tmp_path.iterdir()) == [src]


def test_the_reason_names_no_identity(instance: Dataset) -> None:
    instance.BurnedInAnnotation = "YES"
    with pytest.raises(PseudonymizationError) as caught:
        Pseudonymizer(KEY).pseudonymize_dataset(instance)
    message = str(caught.value)
    assert "PID-4711" not in message and "Doe" not in message
    assert str(instance.SOPInstanceUID) not in message and "2.25." in message


@pytest.mark.parametrize(
    ("modality", "sop_class"),
    [("US", "1.2.840.10008.5.1.4.1.1.6.1"), ("OT", "1.2.840.10008.5.1.4.1.1.7")],
)
def test_classes_known_for_burned_in_text_are_refused_unless_known_clean(
    modality: str, sop_class: str
) -> None:
    ds = make_instance(modality=modality, sop_class=sop_class)
    del ds.BurnedInAnnotation
    with pytest.raises(PseudonymizationError, match="known-clean"):
        Pseudonymizer(KEY).pseudonymize_dataset(ds)
    assert Pseudonymizer(KEY, known_clean_pixels=True).pseudonymize_dataset(ds).dataset


def test_recognizable_face_is_refused(instance: Dataset) -> None:
    instance.RecognizableVisualFeatures = "YES"
    with pytest.raises(PseudonymizationError, match="Recognizable Visual Features"):
        Pseudonymizer(KEY).pseudonymize_dataset(instance)


def test_a_plain_radiograph_passes_and_the_option_can_be_off(instance: Dataset) -> None:
    del instance.BurnedInAnnotation
    assert Pseudonymizer(KEY).pseudonymize_dataset(instance).dataset
    screenshot = make_instance(modality="OT", sop_class="1.2.840.10008.5.1.4.1.1.7")
    options = DeidOptions(clean_pixel_data=False)
    assert Pseudonymizer(KEY, options=options).pseudonymize_dataset(screenshot).dataset


@pytest.mark.parametrize("flag", ["BurnedInAnnotation", "RecognizableVisualFeatures"])
def test_yes_flags_are_refused_even_from_a_known_clean_source(flag: str) -> None:
    ds = make_instance()
    setattr(ds, flag, "YES")
    for pseudonymizer in (
        Pseudonymizer(KEY, known_clean_pixels=True),
        Pseudonymizer(KEY, options=DeidOptions(clean_pixel_data=False)),
    ):
        with pytest.raises(PseudonymizationError, match=r"\(0028,030[12]\) is YES"):
            pseudonymizer.pseudonymize_dataset(ds)


@pytest.mark.parametrize(
    ("modality", "sop_class"),
    [
        ("US", "1.2.840.10008.5.1.4.1.1.6.1"),
        ("OT", "1.2.840.10008.5.1.4.1.1.7"),
        ("XA", "1.2.840.10008.5.1.4.1.1.12.1"),
        ("DX", "1.2.840.10008.5.1.4.1.1.7"),  # a screenshot labelled as a radiograph
    ],
)
def test_class_and_modality_are_judged_before_the_flag(modality: str, sop_class: str) -> None:
    ds = make_instance(modality=modality, sop_class=sop_class)
    ds.BurnedInAnnotation = "NO"  # not believed for these classes
    with pytest.raises(PseudonymizationError, match="whatever Burned In Annotation"):
        Pseudonymizer(KEY).pseudonymize_dataset(ds)
    assert Pseudonymizer(KEY, known_clean_pixels=True).pseudonymize_dataset(ds).dataset


def test_an_overlay_embedded_in_pixel_bits_is_refused(instance: Dataset) -> None:
    instance.add_new(0x60000010, "US", 4)  # Overlay Rows
    instance.add_new(0x60000011, "US", 4)  # Overlay Columns
    instance.add_new(0x60000102, "US", 15)  # Overlay Bit Position: in the pixels' unused bits
    with pytest.raises(PseudonymizationError, match="embedded in unused bits"):
        Pseudonymizer(KEY).pseudonymize_dataset(instance)
    instance.add_new(0x60003000, "OW", b"\x00\x00")  # a separate overlay plane: removed
    assert Pseudonymizer(KEY).pseudonymize_dataset(instance).dataset
