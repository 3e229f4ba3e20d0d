"""fdd.transport."""
