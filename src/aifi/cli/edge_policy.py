"""``aifi edge policy show|diff|approve``: the hospital's release policy.

``show`` prints what is approved; ``diff`` compares it with what the hub's
catalog requests now (exit status 1 while a version awaits approval);
``approve`` records the privacy officer's approval of one algorithm version
in ``release-policy.toml`` (who and when) and in the edge's audit trail.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from aifi.errors import AifiError

if TYPE_CHECKING:  # the edge is imported by the commands that run, not by --help
    from aifi.edge.config import EdgeSettings
    from aifi.edge.policy import ReleasePolicy
    from aifi.protocol.schemas import CatalogEntryOut

app = typer.Typer(help="The hospital's release policy: what may leave per algorithm version.")

ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="edge.toml")]


def _settings(config: Path) -> EdgeSettings:
    from aifi.edge.config import load_edge_settings

    try:
        return load_edge_settings(config)
    except AifiError as exc:
        raise typer.Exit(_fail(str(exc))) from exc


def _policy(settings: EdgeSettings) -> ReleasePolicy:
    from aifi.edge.policy import ReleasePolicy

    try:
        return ReleasePolicy.load(settings.release_policy_path)
    except AifiError as exc:
        raise typer.Exit(_fail(str(exc))) from exc


def _catalog(settings: EdgeSettings) -> list[CatalogEntryOut]:
    from aifi.protocol.client import HubClient

    hub = HubClient(settings.hub)
    try:
        return hub.catalog()
    except AifiError as exc:
        raise typer.Exit(_fail(f"the hub's catalog cannot be read: {exc}")) from exc
    finally:
        hub.close()


@app.command()
def show(config: ConfigOption = Path("edge.toml")) -> None:
    """Print the approvals of the release policy."""
    settings = _settings(config)
    policy = _policy(settings)
    typer.echo(f"release policy: {settings.release_policy_path}")
    for (algorithm, version), a in sorted(policy.approvals.items()):
        names = ", ".join(a.attributes) or "nothing beyond the profile"
        typer.echo(f"{algorithm} {version}: {names} (approved by {a.approved_by}, {a.approved_at})")
    if policy.add:
        typer.echo(f"descriptor words added: {', '.join(policy.add)}")


@app.command()
def diff(config: ConfigOption = Path("edge.toml")) -> None:
    """Compare the hub's requests with the policy; exit 1 while a version awaits approval."""
    from aifi.protocol.schemas import AlgorithmState

    settings = _settings(config)
    policy = _policy(settings)
    table = Table("algorithm", "version", "released", "withheld", "awaits approval")
    waiting = False
    for entry in _catalog(settings):
        if entry.state != AlgorithmState.ACTIVE:
            continue
        release = policy.decide(entry.algorithm_id, {entry.version: entry.keep_attributes})
        held = release.waiting.get(entry.version, ())
        waiting = waiting or bool(held)
        table.add_row(
            entry.algorithm_id,
            entry.version,
            ", ".join(release.keep) or "-",
            ", ".join(release.withheld.get(entry.version, ())) or "-",
            ", ".join(held) or "-",
        )
    Console().print(table)
    if waiting:
        raise typer.Exit(1)


@app.command()
def approve(
    algorithm: Annotated[str, typer.Option(help="algorithm id, as in the hub's catalog")],
    version: Annotated[str, typer.Option(help="the version approved")],
    by: Annotated[str, typer.Option(help="who approves (the privacy officer), recorded")],
    attribute: Annotated[
        list[str] | None,
        typer.Option(help="an attribute approved (repeat); default: what the hub requests"),
    ] = None,
    config: ConfigOption = Path("edge.toml"),
) -> None:
    """Approve what one algorithm version may receive; written to the policy and audited."""
    from aifi.edge.policy import releasable
    from aifi.edge.state import EdgeState

    settings = _settings(config)
    policy = _policy(settings)
    if attribute:
        requested = list(attribute)
    else:
        found = [
            e for e in _catalog(settings) if e.algorithm_id == algorithm and e.version == version
        ]
        if not found:
            raise typer.Exit(
                _fail(
                    f"the hub's catalog has no {algorithm} {version}; name the attributes with "
                    "--attribute or check 'aifi edge policy diff'"
                )
            )
        requested = list(found[0].keep_attributes)
    never = sorted({a for a in requested if not releasable(a)})
    approved = sorted({a for a in requested if releasable(a)})
    try:
        updated = policy.approve(algorithm, version, approved, by=by)
        updated.write(settings.release_policy_path)
    except AifiError as exc:
        raise typer.Exit(_fail(str(exc))) from exc
    state = EdgeState(settings.data_dir / "edge.db", hospital=settings.hospital)
    try:
        state.audit.append(
            "release-policy-approved",
            actor=by,
            hospital=settings.hospital,
            algorithm=algorithm,
            algorithm_version=version,
            detail={"approved": approved, "never released": never},
        )
    finally:
        state.close()
    typer.echo(
        f"approved for {algorithm} {version}: {', '.join(approved) or 'nothing beyond the profile'}"
    )
    if never:
        typer.echo(f"never released (identity, UIDs, dates): {', '.join(never)}")


def _fail(message: str) -> int:
    Console(stderr=True, soft_wrap=True).print(
        f"[red]error:[/red] {escape(message)}", highlight=False
    )
    return 2
