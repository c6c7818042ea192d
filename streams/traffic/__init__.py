"""Road traffic KPIs: vehicle counts, speeds and congestion per segment, district, city."""
