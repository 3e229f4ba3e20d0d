"""fdd.distillation."""
