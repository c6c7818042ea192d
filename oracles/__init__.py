"""Independent oracles: KPI contracts written a second time, sharing no code with the
pipeline (processors, sources, city packs' loader), so a bug on either side shows up as a
difference. They import only ``core.settings`` and the standard library (import-linter
checks that they never import streams or connectors)."""
