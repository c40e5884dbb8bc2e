"""Re-identification maps every pseudonymous UID back, nested ones included."""

from __future__ import annotations

from pathlib import Path

import pydicom
from pydicom import Dataset
from pydicom.uid import generate_uid

from aifi.deid import Pseudonymizer, PseudonymMap
from aifi.demo.samples import DEMO_PATIENTS, cr_study
from aifi.edge.reidentify import reidentify

KEY = bytes(range(32))


def item(**values: object) -> Dataset:
    ds = Dataset()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


def test_every_reference_and_the_patient_module_come_back(tmp_path: Path) -> None:
    original = cr_study(1, patient=DEMO_PATIENTS[1], rows=32, columns=32)[0]
    pseudo = Pseudonymizer(KEY).pseudonymize_dataset(original.copy())
    pmap = PseudonymMap(tmp_path / "map.db", KEY)
    pmap.remember(pseudo.uid_map)
    sop = pseudo.sop_instance_uid
    series = pseudo.series_instance_uid
    study = pseudo.study_instance_uid

    # a result as the hub makes it: pseudonymous references at several depths
    result = Dataset()
    result.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.34"
    result.SOPInstanceUID = own_uid = generate_uid(prefix="2.25.")
    result.SeriesInstanceUID = own_series = generate_uid()
    result.StudyInstanceUID = study
    result.PatientID = pseudo.patient_pseudonym
    result.PatientName = pseudo.patient_pseudonym
    result.PatientBirthDate = ""
    result.SourceImageSequence = [
        item(ReferencedSOPClassUID=original.SOPClassUID, ReferencedSOPInstanceUID=sop)
    ]
    result.CurrentRequestedProcedureEvidenceSequence = [
        item(
            StudyInstanceUID=study,
            ReferencedSeriesSequence=[
                item(
                    SeriesInstanceUID=series,
                    ReferencedSOPSequence=[
                        item(
                            ReferencedSOPClassUID=original.SOPClassUID, ReferencedSOPInstanceUID=sop
                        )
                    ],
                )
            ],
        )
    ]
    result.ContentSequence = [
        item(
            ValueType="CONTAINER",
            ContentSequence=[
                item(
                    ValueType="IMAGE",
                    ReferencedSOPSequence=[
                        item(
                            ReferencedSOPClassUID=original.SOPClassUID, ReferencedSOPInstanceUID=sop
                        )
                    ],
                )
            ],
        )
    ]

    back = reidentify(result, pmap, original, task_id="t1")

    assert back.StudyInstanceUID == original.StudyInstanceUID
    assert back.SourceImageSequence[0].ReferencedSOPInstanceUID == original.SOPInstanceUID
    evidence = back.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.StudyInstanceUID == original.StudyInstanceUID
    assert evidence.ReferencedSeriesSequence[0].SeriesInstanceUID == original.SeriesInstanceUID
    ref = evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert ref.ReferencedSOPInstanceUID == original.SOPInstanceUID
    image = back.ContentSequence[0].ContentSequence[0].ReferencedSOPSequence[0]
    assert image.ReferencedSOPInstanceUID == original.SOPInstanceUID
    # the result's own identity stays the hub's
    assert back.SOPInstanceUID == own_uid and back.SeriesInstanceUID == own_series
    # patient and study modules are the original's
    for keyword in (
        "PatientID",
        "PatientName",
        "PatientBirthDate",
        "PatientSex",
        "AccessionNumber",
        "StudyDate",
        "StudyID",
        "ReferringPhysicianName",
    ):
        assert back.get(keyword) == original.get(keyword), keyword
    # nothing pseudonymous left anywhere
    pseudonyms = set(pseudo.uid_map.values()) | {pseudo.patient_pseudonym}
    assert not any(str(e.value) in pseudonyms for e in back.iterall() if e.VR in ("UI", "LO"))
    # every lookup was recorded with its purpose
    lookups = pmap.lookups()
    assert lookups and all("task t1" in entry.purpose for entry in lookups)

    encoded = tmp_path / "sr.dcm"
    pydicom.dcmwrite(encoded, back, implicit_vr=False, little_endian=True)
    assert pydicom.dcmread(encoded, force=True).PatientID == original.PatientID
