"""Reports: the configuration's REPORT.md and the comparison across configurations."""
