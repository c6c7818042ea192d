"""Waste KPIs."""
