"""fdd.fairness."""
