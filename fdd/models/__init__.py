"""fdd.models."""
