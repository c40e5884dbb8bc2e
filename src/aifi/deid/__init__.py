"""Pseudonymization at the edge: DICOM PS3.15 Annex E as data, keyed pseudonyms, the map back.

::

    Pseudonymizer(key, options=DeidOptions(...), keep=manifest.keep_attributes)
        .pseudonymize_file(src, dst)  -> PseudonymizedInstance
        .pseudonymize_dataset(ds)     -> PseudonymizedInstance (.dataset)
    PseudonymMap(path, key)           the encrypted map back, every lookup recorded
    check_deidentified(ds)            the hub's gate: reasons, or []
    check_deidentified_file(path)     the same on a file's bytes (duplicates, after Pixel Data)
    clean_descriptor(text)            free text reduced to the descriptor vocabulary

The profile (Table E.1-1) and the safe list are CSV files in ``data/``.
"""

from __future__ import annotations

from aifi.deid.descriptors import (
    clean_descriptor,
    default_vocabulary,
    is_clean_descriptor,
    load_vocabulary,
)
from aifi.deid.keys import load_or_create_key, pseudo_uid
from aifi.deid.options import CID_7050, DeidOptions
from aifi.deid.pseudomap import Lookup, PseudonymMap
from aifi.deid.pseudonymizer import PseudonymizedInstance, Pseudonymizer
from aifi.deid.verify import check_deidentified, check_deidentified_file

__all__ = [
    "CID_7050",
    "DeidOptions",
    "Lookup",
    "PseudonymMap",
    "PseudonymizedInstance",
    "Pseudonymizer",
    "check_deidentified",
    "check_deidentified_file",
    "clean_descriptor",
    "default_vocabulary",
    "is_clean_descriptor",
    "load_or_create_key",
    "load_vocabulary",
    "pseudo_uid",
]
