"""Service KPIs."""
