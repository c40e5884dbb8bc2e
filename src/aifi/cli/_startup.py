"""Keep ``aifi --help`` fast: typer's coercion layer is built only for values it coerces.

typer 0.29 builds a pydantic ``TypeAdapter`` for every parameter it walks
past while parsing, including flags that are absent from the command line
(the root group's ``--help`` and completion flags on ``aifi hub --help``):
their value is ``None``, which :meth:`typer._coercion.RuntimeParam.coerce`
returns before the adapter is used, yet building it imports pydantic (about
0.1 s of CPU). :func:`defer_coercion` makes typer build the same coercion
on the first value that needs it; nothing else changes. Where typer's
internals differ (another version), it does nothing and the CLI is only
slower. ``tests/cli/test_start.py`` holds it to that.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

logger = logging.getLogger(__name__)

__all__ = ["defer_coercion"]


def defer_coercion() -> None:
    """Replace ``typer.core.build_runtime_param`` by a lazy equivalent (idempotent)."""
    try:
        import typer.core
        from typer import _coercion
    except ImportError:  # pragma: no cover - another typer layout
        return
    build = getattr(_coercion, "build_runtime_param", None)
    base = getattr(_coercion, "RuntimeParam", None)
    current = getattr(typer.core, "build_runtime_param", None)
    if build is None or base is None or current is not build:
        logger.debug("typer's coercion layer is not the one expected; left as it is")
        return
    real_build: Callable[[Any], Any] = cast("Callable[[Any], Any]", build)

    @dataclass(frozen=True)
    class Deferred(base):  # type: ignore[misc, valid-type]
        """The runtime parameter typer would build, built when a value arrives."""

        descriptor: Any = None

        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            real = self.__dict__.get("_real")
            if real is None:
                real = real_build(self.descriptor)
                object.__setattr__(self, "_real", real)
            return real._coerce_value(value, param=param, ctx=ctx)

    def deferred(descriptor: Any) -> Any:
        return Deferred(descriptor.parameter_info, descriptor.annotation, descriptor)

    typer.core.build_runtime_param = deferred
