"""Resident rights (issue #16): access and erasure of what citystream holds about a case.

- :mod:`trust.rights.access`: everything held about one case, as a JSON export.
- :mod:`trust.rights.erase`: crypto-shredding (the case's subject keys destroyed).
- :mod:`trust.rights.record`: every request recorded (the audit log of trust/audit).

Opt-outs are written by :func:`core.privacy.optout.record` (sources apply them);
``citystream rights`` (citystream/rights_cli.py) is the command line. docs/rights.md.
"""
