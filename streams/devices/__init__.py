"""Devices KPIs."""
