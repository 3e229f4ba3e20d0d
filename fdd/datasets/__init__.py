"""fdd.datasets."""
