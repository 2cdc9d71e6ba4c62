"""Built-in data sets that install offline (see docs/data.md)."""
