"""What to try and what was best, as pure functions of the trials' values (no Ray, no MLflow):
sampling scales and spaces, coarse-to-fine zoom, ASHA-aware ranking, successive halving's rung
decisions, and permutation importance."""
