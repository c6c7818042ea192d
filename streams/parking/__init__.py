"""Parking KPIs."""
