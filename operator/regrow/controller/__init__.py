"""The operator: kopf handlers (thin) over idempotent, level-based reconcilers."""
