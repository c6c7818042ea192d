"""Stands for the repository's oracles/ package (docs/extending.md, "Add a KPI family")."""
