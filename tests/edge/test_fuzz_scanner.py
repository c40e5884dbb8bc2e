"""A short property-based fuzz of what parses hostile bytes (hypothesis, bounded).

The byte-level scanner (:func:`aifi.dicom.walker.scan_dataset`) runs on
every received data set before anything is written: for any bytes it must
return a result (a reason or none), never raise, and stay fast. The
pseudonymizer's file entry must raise nothing but the project's own errors.
Inputs are random bytes and mutations of real encodings (the corpus of
``bad_input.py``): flipped bytes, cuts, spliced lengths.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import replace

import pytest
from bad_input import base_instance, corpus, encode, nested, part10
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aifi.deid import Pseudonymizer
from aifi.dicom.walker import scan_dataset
from aifi.errors import AifiError

_BODY = encode(base_instance("fuzz"))
_CORPUS = corpus(bomb_bytes=1 << 16)
_SEEDS = [_BODY, _BODY[:400] + nested(5), *(case.body for case in _CORPUS if case.body)]
# The listener refuses deep nesting before anything reads it (the scanner's bound); the
# pseudonymizer recurses and raises RecursionError there, which `aifi pseudonymize`
# reports per file. Its fuzz starts from the other cases.
_FLAT_SEEDS = [_BODY, *(c.body for c in _CORPUS if c.body and not c.name.startswith("nesting"))]
_CASE = _CORPUS[0]


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes] = _SEEDS) -> bytes:
    """A real encoding with a few bytes overwritten, a cut, or random bytes spliced in."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(0, 6))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        data[at : at + 4] = draw(st.binary(min_size=1, max_size=4))
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


inputs = st.one_of(st.binary(max_size=512), mutated())


@settings(max_examples=200, deadline=500, suppress_health_check=[HealthCheck.too_slow])
@given(data=inputs, implicit=st.booleans(), little=st.booleans())
def test_scanner_never_raises_and_stays_fast(data: bytes, implicit: bool, little: bool) -> None:
    started = time.perf_counter()
    result = scan_dataset(
        data, implicit_vr=implicit, little_endian=little, wanted=frozenset({0x0020000D})
    )
    assert time.perf_counter() - started < 0.5
    assert result.reason is None or result.problem in ("truncated", "malformed", "too-deep")
    assert all(isinstance(v, bytes) for v in result.values.values())


@settings(max_examples=60, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(data=mutated(_FLAT_SEEDS))
def test_pseudonymizer_raises_only_its_own_errors(
    tmp_path_factory: pytest.TempPathFactory, data: bytes
) -> None:
    folder = tmp_path_factory.mktemp("fuzz")
    src = folder / "in.dcm"
    src.write_bytes(part10(replace(_CASE, body=data)))
    pseudonymizer = Pseudonymizer(b"k" * 32)
    with contextlib.suppress(AifiError):  # anything else fails the test
        pseudonymizer.pseudonymize_file(src, folder / "out.dcm")
