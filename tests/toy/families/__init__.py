"""Stands for the repository's families/ package (docs/extending.md, "Add a KPI family")."""
