"""The registry: algorithms by manifest id."""

from __future__ import annotations

import pytest

from aifi.algorithms import registry
from aifi.algorithms.base import Algorithm
from aifi.errors import AlgorithmError


def test_integrity_check_is_registered() -> None:
    algorithm = registry.get("integrity-check")

    assert isinstance(algorithm, Algorithm)
    assert algorithm.manifest.id == "integrity-check"
    assert "integrity-check" in registry.available()
    assert "integrity-check" in [m.id for m in registry.manifests()]


def test_unknown_id_names_the_available_ones() -> None:
    with pytest.raises(AlgorithmError, match=r"no algorithm 'nope'.*integrity-check"):
        registry.get("nope")


def test_available_is_a_copy() -> None:
    registry.available().clear()

    assert "integrity-check" in registry.available()


def test_every_registered_algorithm_is_keyed_by_its_manifest_id() -> None:
    algorithms = registry.available()

    assert algorithms
    for algorithm_id, algorithm in algorithms.items():
        assert algorithm.manifest.id == algorithm_id
    assert [m.id for m in registry.manifests()] == sorted(algorithms)


def test_an_entry_may_name_a_class_that_makes_the_algorithm() -> None:
    algorithm = registry._make("aifi.algorithms.integrity_check:IntegrityCheck")

    assert algorithm.manifest.id == "integrity-check"


def test_an_entry_that_is_no_algorithm_is_refused() -> None:
    with pytest.raises(AlgorithmError, match="MANIFEST"):
        registry._make("aifi.algorithms.integrity_check:MANIFEST")
