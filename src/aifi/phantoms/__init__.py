"""Procedurally generated phantoms: synthetic radiographs and CT that carry what the
three demo applications look for, as complete DICOM instances (synthetic patients only).

Used to train the demo models (``training/``), in tests, and by the demo to
make sample studies.
"""

from aifi.phantoms.chest_ct import ChestCT, Embolus, chest_ct_series, chest_ct_volume
from aifi.phantoms.dicom import StudyContext, dicom_age
from aifi.phantoms.hand import bone_age_study, hand_radiograph, maturity
from aifi.phantoms.long_bone import fracture_study, long_bone_radiograph
from aifi.phantoms.radiograph import Radiograph, radiograph_dataset
from aifi.phantoms.write import as_algorithm_input, write_study

__all__ = [
    "ChestCT",
    "Embolus",
    "Radiograph",
    "StudyContext",
    "as_algorithm_input",
    "bone_age_study",
    "chest_ct_series",
    "chest_ct_volume",
    "dicom_age",
    "fracture_study",
    "hand_radiograph",
    "long_bone_radiograph",
    "maturity",
    "radiograph_dataset",
    "write_study",
]
