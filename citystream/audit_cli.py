"""`citystream audit checkpoint|verify|public-key`: the tamper-evident audit log.

The work is in ``trust/audit/``; this module reads the settings and keys, runs it and
prints what it found. docs/audit.md walks an auditor through the commands.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from core.settings import Settings


def add_audit_parser(sub: Any, add_common: Callable[[argparse.ArgumentParser], None]) -> None:
    audit = sub.add_parser(
        "audit", help="the audit log: sign a checkpoint, verify the log, print the public key"
    )
    what = audit.add_subparsers(dest="audit_command", required=True)
    checkpoint = what.add_parser(
        "checkpoint", help="sign a checkpoint of the audit log now (tree size, root, time)"
    )
    add_common(checkpoint)
    verify = what.add_parser(
        "verify",
        help="rebuild the Merkle tree from the audit topic, check every checkpoint's signature "
        "and consistency, name the first bad record (exit 1)",
    )
    verify.add_argument(
        "--public-key",
        action="append",
        metavar="KEY",
        help="a public key of the operator to trust (PEM, base64 or hex), or a keyring file "
        "(one key a line, or PEM blocks) or directory of them; repeat for several (across "
        "a key rotation); each checkpoint's key id picks its key. Default: the "
        "audit_public_key setting (the same forms), else the signing key's",
    )
    add_common(verify)
    public = what.add_parser("public-key", help="print the checkpoint key's public key (base64)")
    add_common(public)


def cmd_audit(args: argparse.Namespace) -> int:
    from citystream.cli import build_settings
    from trust.audit.checkpoint import AuditLogError

    settings = build_settings(args)
    try:
        if args.audit_command == "checkpoint":
            return checkpoint_command(settings)
        if args.audit_command == "verify":
            return verify_command(settings, args.public_key)
        return public_key_command(settings)
    except (AuditLogError, ValueError, OSError, RuntimeError, TimeoutError) as exc:
        print(f"citystream audit {args.audit_command}: {exc}", file=sys.stderr)
        return 2


def checkpoint_command(settings: Settings) -> int:
    from core.audit_append import ensure_audit_topics
    from trust.audit.checkpoint import checkpoint_now, read_checkpoints

    ensure_audit_topics(settings)
    made = checkpoint_now(settings)
    if not made:
        existing = read_checkpoints(settings)
        size = existing[-1].tree_size if existing else 0
        print(f"audit log unchanged since the last checkpoint (tree size {size})")
        return 0
    last = made[-1]
    print(
        f"signed {len(made)} checkpoint(s): tree size {last.tree_size}, "
        f"root {last.root_hash.hex()}, key {last.key_id}"
    )
    return 0


def verify_command(settings: Settings, public_keys: list[str] | None) -> int:
    from trust.audit.checkpoint import read_checkpoints, trusted_keys
    from trust.audit.log import read_log
    from trust.audit.verify import verify

    ring = trusted_keys(settings, public_keys)
    records, checkpoints = read_log(settings), read_checkpoints(settings)
    verdict = verify(records, checkpoints, ring)
    signers = ", ".join(f"{kid} ({n})" for kid, n in verdict.signers.items()) or ring.names()
    print(
        f"audit log {settings.topic('city.audit.v1')}: {verdict.records} records, "
        f"{verdict.checkpoints} checkpoints signed by {signers}, "
        f"{verdict.signed_size} records covered"
    )
    if verdict.ok:
        unsigned = verdict.records - verdict.signed_size
        tail = f"; {unsigned} newer records not yet checkpointed" if unsigned > 0 else ""
        print(f"OK: every checkpoint verifies and the log is consistent with them{tail}")
        return 0
    for problem in verdict.problems:
        print(f"FAIL {problem}")
    if verdict.first_bad_text:
        print(f"first bad record: {verdict.first_bad_text}")
    return 1


def public_key_command(settings: Settings) -> int:
    from trust.audit.checkpoint import audit_signing_key
    from trust.statements.signing import public_key_text

    print(public_key_text(audit_signing_key(settings, create=True).public_key()))
    return 0
