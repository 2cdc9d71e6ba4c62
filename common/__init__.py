"""What every package shares: typed config loading (:mod:`common.config`)."""
