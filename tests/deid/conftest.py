"""Fixtures for the pseudonymization tests."""

from __future__ import annotations

import pytest
from deid_support import KEY, make_instance
from pydicom.dataset import Dataset


@pytest.fixture
def key() -> bytes:
    return KEY


@pytest.fixture
def instance() -> Dataset:
    return make_instance()
