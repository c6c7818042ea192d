"""Energy KPIs."""
