"""The public surface of aifi.deid is small and stays what the edge and the hub call."""

from __future__ import annotations

import aifi.deid


def test_exported_members() -> None:
    assert set(aifi.deid.__all__) == {
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
    }
    for name in set(aifi.deid.__all__) - {"CID_7050"}:
        assert getattr(aifi.deid, name).__module__.startswith("aifi.deid.")
