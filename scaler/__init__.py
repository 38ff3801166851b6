"""taskqueue-scaler: sets ECS worker counts from PromQL rules (work in progress)."""
