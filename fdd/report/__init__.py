"""fdd.report."""
