"""``/v1/audit``: the audit log's latest signed checkpoint, and its Merkle proofs.

- ``GET /v1/audit/checkpoint`` (anyone): the latest checkpoint (tree size, root hash,
  time, Ed25519 signature over the exact ``signed`` text) and the public key, so that an
  oversight body can keep the checkpoints it has seen and hold later ones to them.
- ``GET /v1/audit/proof?leaf=&tree_size=`` (auditor, operator): the RFC 9162 inclusion
  proof of record ``leaf`` in the tree of ``tree_size`` records (default: the latest
  checkpoint's), with the record itself; ``?first=&second=``: the consistency proof
  between two tree sizes.

A proof names the signed checkpoint of its tree size when there is one. Every call is
itself an audited access. The log is read through :class:`trust.audit.log.LogView`,
kept on the app (one per process), which reads only the records added since its last look.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from api.context import Context, CurrentCaller, Role, record_access
from api.problems import Problem, bad_parameter, not_found
from trust.audit.checkpoint import Checkpoint, public_key_info, read_checkpoints, trusted_key
from trust.audit.log import LogView
from trust.audit.proofs import consistency, inclusion
from trust.merkle import ProofError

router = APIRouter(prefix="/v1/audit", tags=["Audit"])


def log_view(request: Request) -> LogView:
    """The process's view of the audit log, made on first use."""
    view: LogView | None = getattr(request.app.state, "audit_view", None)
    if view is None:
        view = request.app.state.audit_view = LogView(request.app.state.context.settings)
    return view


def _key(request: Request, kid: str | None = None) -> dict[str, str]:
    """The trusted key with id ``kid`` (the one that signed what is shown), else the
    current one: after a rotation the latest checkpoint may still be the old key's."""
    try:
        return public_key_info(trusted_key(request.app.state.context.settings, kid=kid))
    except ValueError as exc:
        raise Problem(503, f"no audit key configured: {exc}") from exc


@router.get("/checkpoint", summary="The audit log's latest signed checkpoint and public key")
def latest_checkpoint(
    request: Request, context: Context, caller: CurrentCaller, city: str | None = None
) -> dict[str, Any]:
    context.city(city)  # one log for every city served; an unknown city is still 404
    checkpoints = read_checkpoints(context.settings)
    if not checkpoints:
        raise not_found("no audit checkpoint signed yet (citystream audit checkpoint)")
    latest = checkpoints[-1]
    record_access(context, caller, "/v1/audit/checkpoint", {}, None, 1)
    return {"checkpoint": latest.public(), "key": _key(request, latest.key_id)}


def _signed(checkpoints: list[Checkpoint], size: int) -> dict[str, Any] | None:
    for cp in reversed(checkpoints):
        if cp.tree_size == size:
            return cp.public()
    return None


@router.get(
    "/proof",
    summary="Inclusion (leaf, tree_size) or consistency (first, second) proof; auditors",
)
def proof(
    request: Request,
    context: Context,
    caller: CurrentCaller,
    leaf: Annotated[int | None, Query(ge=0, description="leaf index (record position)")] = None,
    tree_size: Annotated[int | None, Query(ge=1, description="default: latest checkpoint")] = None,
    first: Annotated[int | None, Query(ge=0, description="smaller tree size")] = None,
    second: Annotated[int | None, Query(ge=1, description="larger tree size")] = None,
    city: Annotated[str | None, Query(description="checked only: one log for all")] = None,
) -> dict[str, Any]:
    context.city(city)  # one log for every city served; an unknown city is still 404
    if not caller.role.at_least(Role.auditor):
        raise Problem(403, "audit proofs are for the auditor and operator roles")
    if (leaf is None) == (first is None or second is None):
        raise bad_parameter("leaf", "give leaf (and tree_size), or first and second")
    view = log_view(request)
    tree = view.refresh()
    checkpoints = read_checkpoints(context.settings)
    try:
        if leaf is not None:
            size = tree_size or (checkpoints[-1].tree_size if checkpoints else len(tree))
            body = inclusion(tree, leaf, size)
            body["record"] = view.records[leaf]  # its canonical JSON is the leaf
            parameters: dict[str, Any] = {"leaf": leaf, "tree_size": size}
            body["checkpoint"] = _signed(checkpoints, size)
        else:
            assert first is not None and second is not None
            body = consistency(tree, first, second)
            parameters = {"first": first, "second": second}
            body["checkpoints"] = [_signed(checkpoints, first), _signed(checkpoints, second)]
    except ProofError as exc:
        name = "leaf" if leaf is not None else "second"
        raise bad_parameter(name, str(exc)) from None
    record_access(context, caller, "/v1/audit/proof", parameters, None, 1)
    return body
