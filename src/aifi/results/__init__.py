"""Findings become standard DICOM here, not in each algorithm (IHE AI Results).

:func:`encode_results` turns one run's :class:`~aifi.algorithms.base.Findings`
into the DICOM objects the manifest says it ``produces``, one builder per
result type:

========  =====================================================  ==================
kind      object                                                 builder
========  =====================================================  ==================
``sr``    Comprehensive 3D SR, TID 1500 Measurement Report       :mod:`aifi.results.sr`
``gsps``  Grayscale Softcopy Presentation State with the boxes   :mod:`aifi.results.gsps`
``sc``    Secondary Capture: rendered key image and report       :mod:`aifi.results.sc`
========  =====================================================  ==================

Every object joins the source (pseudonymized) study and carries the
algorithm's identity and version; the kind travels with each object so
that each hospital receives only the kinds it chose. Each kind is one
series with its own Series Number (:func:`aifi.results.sources.series_numbers`),
and every object is written in UTF-8 whatever the sources' character set.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pydicom

from aifi.core.findings import Findings
from aifi.core.manifest import Manifest
from aifi.errors import AlgorithmError
from aifi.results.gsps import build_gsps
from aifi.results.sc import build_sc
from aifi.results.sources import series_numbers
from aifi.results.sr import build_sr

__all__ = ["BUILDERS", "encode_results", "load_standard_tables", "series_numbers"]

Builder = Callable[[Findings, Manifest, Sequence[pydicom.Dataset], int], list[pydicom.Dataset]]
"""(findings, manifest, sources, series number) → the objects of one result series."""


def _sr(
    findings: Findings,
    manifest: Manifest,
    sources: Sequence[pydicom.Dataset],
    series: int,
    prior_sources: Sequence[pydicom.Dataset] = (),
) -> list[pydicom.Dataset]:
    return [
        build_sr(findings, manifest, sources, series_number=series, prior_sources=prior_sources)
    ]


def _gsps(
    findings: Findings, manifest: Manifest, sources: Sequence[pydicom.Dataset], series: int
) -> list[pydicom.Dataset]:
    return list(build_gsps(findings, manifest, sources, series_number=series))


def _sc(
    findings: Findings, manifest: Manifest, sources: Sequence[pydicom.Dataset], series: int
) -> list[pydicom.Dataset]:
    return [build_sc(findings, manifest, sources, series_number=series)]


BUILDERS: dict[str, Builder] = {
    "sr": _sr,
    "gsps": _gsps,
    "sc": _sc,
}
"""Result kind (as in ``Manifest.produces``) → builder; one line per result type."""


def encode_results(
    findings: Findings,
    manifest: Manifest,
    sources: Sequence[pydicom.Dataset],
    *,
    earlier_series: int = 0,
    prior_sources: Sequence[pydicom.Dataset] = (),
) -> list[tuple[str, pydicom.Dataset]]:
    """The DICOM objects for ``findings``, as (kind, dataset), in ``manifest.produces`` order.

    ``earlier_series`` is how many result series this algorithm already
    made on this study (a re-run), so that the new series are numbered
    after them. ``sources`` are the pseudonymized images the algorithm ran on. Headers
    suffice: the rendered image (``sc``) reads its key image's pixel data
    from the file a header was read from (``ds.filename``). ``prior_sources``
    are the headers of the prior studies the algorithm was given; the SR lists
    them as other evidence. Raises
    :class:`aifi.errors.AlgorithmError` when the manifest asks for a kind
    aifi cannot encode.
    """
    unknown = [kind for kind in manifest.produces if kind not in BUILDERS]
    if unknown:
        raise AlgorithmError(
            f"algorithm {manifest.id!r} produces {', '.join(unknown)}, which aifi cannot "
            f"encode; known result kinds: {', '.join(sorted(BUILDERS))}"
        )
    numbers = series_numbers(manifest.id, earlier=earlier_series, count=len(manifest.produces))
    objects: list[tuple[str, pydicom.Dataset]] = []
    for kind, number in zip(manifest.produces, numbers, strict=True):
        if kind == "sr":  # the one result type that records evidence from other studies
            made = _sr(findings, manifest, sources, number, prior_sources)
        else:
            made = BUILDERS[kind](findings, manifest, sources, number)
        objects.extend((kind, ds) for ds in made)
    return objects


def load_standard_tables() -> None:
    """Load highdicom's tables of the standard (IODs, modules, attributes) now.

    highdicom reads them on the first object it builds (every SOP class
    asks whether its IOD has Content Date) and keeps them: about 60 MB of
    Python objects, and over 100 MB while its JSON is parsed. Loaded when an
    algorithm process starts, that passing peak comes before the first
    study's images rather than on top of them (issue 12, bench/memory.py).
    A highdicom without these private functions is simply not warmed.
    """
    from highdicom import _standard_utils

    for name in ("get_sop_class_iod_map", "get_iod_module_map", "get_module_attribute_map"):
        load = getattr(_standard_utils, name, None)
        if callable(load):
            load()
