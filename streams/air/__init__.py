"""Air KPIs."""
