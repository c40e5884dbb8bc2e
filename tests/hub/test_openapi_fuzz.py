"""schemathesis against the hub's own OpenAPI document: no request makes it answer 5xx.

The hub runs under a real uvicorn on loopback (the ``hub`` fixture) with a
SQLite database in the test's folder. For every operation of
``/openapi.json``, schemathesis generates a few valid and a few invalid
requests (bounded: :data:`EXAMPLES` each, no shrinking), and each is sent
once as a hospital and once as an operator. Whatever the input, the
answer must be a definite one: a 2xx, or a 4xx saying what is wrong; a 5xx
is a bug in the hub. A STOW-RS upload is done first, so that some generated
requests meet stored data.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.core.result import Ok

from .conftest import Hub

EXAMPLES = 6
"""Requests generated per operation and mode (valid, invalid)."""


@pytest.mark.slow
def test_no_request_makes_the_hub_answer_5xx(
    hub: Hub,
    token_a: str,
    operator_token: str,
    study: tuple[str, list[Path]],
) -> None:
    assert hub.stow(token_a, study[1]).status_code == 200
    base_url = str(hub.client.base_url).rstrip("/")
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    tokens = {"hospital": token_a, "operator": operator_token}
    failures: list[str] = []
    sent = 0
    started = time.monotonic()

    for found in schema.get_all_operations():
        assert isinstance(found, Ok), f"the hub's OpenAPI document is invalid: {found.err()}"
        operation = found.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                derandomize=True,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            def check(case: schemathesis.Case) -> None:
                nonlocal sent
                for who, token in tokens.items():
                    response = case.call(
                        base_url=base_url,
                        headers={"Authorization": f"Bearer {token}"},
                        timeout=30,
                    )
                    sent += 1
                    if response.status_code >= 500:
                        failures.append(
                            f"{case.method} {case.formatted_path} as {who}: "
                            f"{response.status_code} {response.text[:200]}"
                        )

            check()

    elapsed = time.monotonic() - started
    assert not failures, "\n".join(sorted(set(failures)))
    assert sent > 0
    assert elapsed < 120, f"the bounded run took {elapsed:.0f} s"
