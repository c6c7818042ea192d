"""Traffic KPIs: segments, districts, the city."""
