"""A toy KPI family, noise, added exactly as docs/extending.md says, in a copy of the
repository's layout (families/, oracles/, schemas/avro/) so that the walk-through's paths
read the same here; tests/integration/test_toy_family.py registers and runs it."""
