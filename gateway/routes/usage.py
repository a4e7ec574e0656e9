"""``GET /v1/memory/usage``: the tokens the upstreams reported, summed by key, namespace,
model and day (admin keys)."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Annotated

import msgspec
from litestar import get
from litestar.params import Parameter

from gateway.auth import Principal
from gateway.errors import ADMIN_ERRORS, BadRequest
from gateway.state import GatewayState
from gateway.usage import GROUPS, UsageRow


class UsageReport(msgspec.Struct):
    since: str
    until: str
    group_by: list[str]
    data: list[UsageRow]
    total: UsageRow
    object: str = "list"


def _day(value: str | None, name: str, default: dt.date) -> str:
    if value is None:
        return default.isoformat()
    try:
        return dt.date.fromisoformat(value).isoformat()
    except ValueError as exc:
        raise BadRequest(
            f"{name} must be a day, YYYY-MM-DD (UTC)", param=name, code="invalid_value"
        ) from exc


@get("/v1/memory/usage", summary="Token usage", responses=ADMIN_ERRORS)
async def usage_report(
    gw: GatewayState,
    principal: Principal,
    *,
    since: str | None = None,
    until: str | None = None,
    group_by: Annotated[str, Parameter(max_length=64)] = "key,namespace,model",
    key: Annotated[str | None, Parameter(max_length=256)] = None,
    namespace: Annotated[str | None, Parameter(max_length=256)] = None,
    model: Annotated[str | None, Parameter(max_length=256)] = None,
) -> UsageReport:
    """Prompt and completion tokens the upstreams reported (their answers' ``usage``), from
    ``since`` to ``until`` (UTC days, both included; default: the last 30 days), summed by
    the ``group_by`` columns (any of day, key, namespace, model; empty: one total), only rows
    of the given ``key``, ``namespace`` (empty string: requests without memory) and
    ``model``. Admin keys only. With ``{hostname}`` in ``store.data_dir``, every replica's
    ledger on the shared volume is added up."""
    principal.require_admin()
    today = dt.datetime.now(dt.UTC).date()
    first = _day(since, "since", today - dt.timedelta(days=29))
    last = _day(until, "until", today)
    if first > last:
        raise BadRequest("since is after until", param="since", code="invalid_value")
    groups = tuple(g.strip() for g in group_by.split(",") if g.strip())
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        raise BadRequest(
            f"group_by: unknown {', '.join(unknown)}; choose from {', '.join(GROUPS)}",
            param="group_by",
            code="invalid_value",
        )
    where = {
        column: value
        for column, value in (("key", key), ("namespace", namespace), ("model", model))
        if value is not None
    }
    rows = await asyncio.to_thread(
        gw.usage.query, since=first, until=last, group_by=groups, where=where
    )
    total = UsageRow(
        requests=sum(r.requests for r in rows),
        prompt_tokens=sum(r.prompt_tokens for r in rows),
        completion_tokens=sum(r.completion_tokens for r in rows),
        total_tokens=sum(r.total_tokens for r in rows),
    )
    return UsageReport(
        since=first,
        until=last,
        group_by=[g for g in GROUPS if g in groups],
        data=rows,
        total=total,
    )
