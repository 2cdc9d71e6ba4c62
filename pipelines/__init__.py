"""Pipeline steps: typed config + input artifacts -> output artifact."""
