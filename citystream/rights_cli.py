"""``citystream rights opt-out|access|erase``: a resident's rights on a 311 case (#16).

- ``opt-out --case ID`` (or ``--field NAME --value V`` for another declared identifier):
  writes the opt-out registry; sources drop the identifier's observations from then on.
- ``access --case ID [--out FILE]``: everything held about the case, as JSON.
- ``erase --case ID``: destroys the case's subject keys (crypto-shredding).

Every request is recorded (trust/rights/record.py). docs/rights.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def add_rights_parser(sub: Any, add_common: Callable[[argparse.ArgumentParser], None]) -> None:
    rights = sub.add_parser(
        "rights", help="resident rights on a 311 case: opt-out, access, erase (docs/rights.md)"
    )
    what = rights.add_subparsers(dest="rights_command", required=True)
    optout = what.add_parser("opt-out", help="record an opt-out; sources drop its events")
    _subject(optout, other_fields=True)
    access = what.add_parser("access", help="export everything held about a case (JSON)")
    _subject(access)
    access.add_argument("--out", type=Path, help="write the export here (default: stdout)")
    erase = what.add_parser("erase", help="destroy the case's keys (crypto-shredding)")
    _subject(erase)
    for parser in (optout, access, erase):
        add_common(parser)


def _subject(parser: argparse.ArgumentParser, other_fields: bool = False) -> None:
    if not other_fields:
        parser.add_argument("--case", required=True, help="the case id the resident holds")
        return
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--case", help="the case id the resident holds")
    group.add_argument("--value", help="a value of the declared identifier --field")
    parser.add_argument(
        "--field", default="request_id", help="the declared identifier (default: request_id)"
    )


def cmd_rights(args: argparse.Namespace) -> int:
    from citystream.cli import build_settings
    from core.startup import wait_for_services

    value = (args.case if args.case is not None else args.value).strip()
    if not value:
        print("error: an empty identifier names no one", file=sys.stderr)
        return 2
    settings = build_settings(args)
    wait_for_services(settings)
    if args.rights_command == "opt-out":
        return _opt_out(settings, args.field, value)
    if args.rights_command == "access":
        return _access(settings, value, args.out)
    return _erase(settings, value)


def _opt_out(settings: Any, field: str, value: str) -> int:
    from core.privacy import optout
    from core.privacy.edge import pseudonymiser
    from trust.rights.record import record_request

    pseudonyms = pseudonymiser(settings)
    record_request(settings, "opt-out", pseudonyms.every(field, value), {"field": field})
    entry = optout.record(settings, pseudonyms, field, value)
    print(json.dumps({"opted_out": True, "field": field, "pseudonyms": list(entry.pseudonyms)}))
    return 0


def _access(settings: Any, case: str, out: Path | None) -> int:
    from trust.rights.access import access

    export = json.dumps(access(settings, case), indent=2, ensure_ascii=False)
    if out is None:
        print(export)
    else:
        out.write_text(export + "\n", encoding="utf-8")
        print(f"wrote {out}", file=sys.stderr)
    return 0


def _erase(settings: Any, case: str) -> int:
    from trust.rights.erase import erase

    outcome = erase(settings, case)
    print(json.dumps(outcome))
    return 0
