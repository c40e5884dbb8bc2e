"""What the console tests share: an algorithm that fails until told not to, and a login."""

from __future__ import annotations

import re
from pathlib import Path

import httpx

from aifi.algorithms.base import AlgorithmInput, Code, Findings, Manifest
from aifi.errors import AlgorithmError

FRACTURE = Code("72704001", "SCT", "Fracture")


class Flaky:
    """Fails (an unreachable vendor service, say) while its switch file exists; then finds."""

    def __init__(self, switch: Path) -> None:
        self.switch = switch
        self.manifest = Manifest(
            id="flaky",
            version="0.1",
            name="fails until its service is back",
            vendor="tests",
            intended_use="tests",
            regulatory_status="none",
            accepts=(),
            produces=(),
        )

    def run(self, inputs: AlgorithmInput) -> Findings:
        if self.switch.exists():
            raise AlgorithmError("the vendor's inference service did not answer (test)")
        return Findings(summary=f"{len(inputs.instances)} images seen", finding=FRACTURE)


def login(client: httpx.Client, token: str) -> httpx.Response:
    """Log in to the console as a person would with the form; the client keeps the cookie."""
    page = client.get("/console/login")
    assert page.status_code == 200
    match = re.search(r'name="form_token" value="([^"]+)"', page.text)
    assert match, "the login form has no form token"
    return client.post(
        "/console/login",
        data={"token": token, "form_token": match[1], "next": "/console"},
        follow_redirects=False,
    )


def csrf_of(page: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', page)
    assert match, "the page has no CSRF field"
    return match[1]
