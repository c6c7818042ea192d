"""``/v1/kpis``: the KPI catalogue, and (below) each KPI's series."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api.context import Context, CurrentCaller, record_access
from core.kpis import Kpi
from families.registry import KPIS

router = APIRouter(prefix="/v1", tags=["KPIs"])


def kpi_entry(kpi: Kpi) -> dict[str, Any]:
    return {
        "name": kpi.name,
        "domain": kpi.domain,
        "unit": kpi.unit,
        "formula": kpi.formula,
        "window": kpi.window,
        "scopes": list(kpi.scopes),
    }


@router.get("/kpis", summary="The KPI catalogue: name, unit, formula, window, scopes")
def catalogue(context: Context, caller: CurrentCaller) -> dict[str, Any]:
    kpis = [kpi_entry(kpi) for kpi in KPIS.values()]
    record_access(context, caller, "/v1/kpis", {}, None, len(kpis))
    return {"kpis": kpis}
