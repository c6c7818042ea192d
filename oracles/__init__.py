"""Independent oracles: KPI contracts written a second time, sharing no code with the
pipeline (processors, sources, city packs' loader), so a bug on either side shows up as a
difference. They import only the standard library, third-party libraries, ``core`` and
``schemas``, and do no I/O but reading the files they are given: citystream/verify.py and
citystream/audit.py fetch what they compare against (import-linter checks that they never
import streams, connectors, citystream or infra)."""
