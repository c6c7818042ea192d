"""Faust stream processors: one package per KPI family, built onto the app in app.py."""
