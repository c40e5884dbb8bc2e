"""The profile is data: Table E.1-1 and the safe list, loaded and checked against the dictionary."""

from __future__ import annotations

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword

from aifi.deid.options import DeidOptions
from aifi.deid.profile import load_profile


def test_table_names_its_edition_and_holds_hundreds_of_rows() -> None:
    profile = load_profile()
    assert "PS3.15" in profile.edition and "E.1-1" in profile.edition and "2019e" in profile.edition
    assert profile.version == "1"
    assert len(profile.rules) > 450


def test_every_row_matches_the_dicom_dictionary() -> None:
    for tag, rule in load_profile().rules.items():
        if "x" in rule.tag.lower():
            continue  # repeating groups 50xx, 60xx
        assert keyword_for_tag(tag) == rule.keyword, rule


def test_well_known_rows_have_the_standard_actions() -> None:
    rules = {r.keyword: r for r in load_profile().rules.values()}
    assert rules["PatientName"].basic == "Z"
    assert rules["PatientBirthDate"].basic == "Z"
    assert rules["SOPInstanceUID"].basic == "U"
    assert rules["InstitutionName"].basic == "X/Z/D"
    assert rules["StudyDate"].options["retain_longitudinal_modified_dates"] == "C"
    assert rules["PatientSex"].options["retain_patient_characteristics"] == "K"
    assert rules["SeriesDescription"].options["clean_descriptors"] == "C"


def test_combined_actions_resolve_to_one() -> None:
    rules = {r.keyword: r for r in load_profile().rules.values()}
    basic = DeidOptions()
    assert rules["InstitutionName"].action(basic) == "Z"
    assert rules["ReferencedImageSequence"].action(basic) == "U"
    assert rules["ProtocolName"].action(basic) == "X"
    assert rules["ProtocolName"].action(DeidOptions(clean_descriptors=True)) == "C"


def test_safe_list_holds_no_free_text_and_no_listed_attribute() -> None:
    profile = load_profile()
    free_text = {"PN", "LT", "ST", "UT", "UC", "UR", "AE"}
    for tag in profile.safe | profile.on_request:
        assert tag not in profile.rules, keyword_for_tag(tag)
        assert dictionary_VR(tag) not in free_text, keyword_for_tag(tag)


def test_every_text_attribute_on_the_safe_list_says_how_it_is_vetted() -> None:
    profile = load_profile()
    for tag in profile.safe | profile.on_request:
        if dictionary_VR(tag) in {"LO", "SH"}:
            assert profile.text.get(tag) in {"vocabulary", "code"}, keyword_for_tag(tag)
    assert profile.text[tag_for_keyword("Manufacturer")] == "vocabulary"
    assert profile.text[tag_for_keyword("CodeMeaning")] == "vocabulary"
    assert profile.text[tag_for_keyword("CodeValue")] == "code"
