"""MLflow tracking: a training's own run (`run`), the workflow's shared store (`store`), and
bounded retries of every store call on a locked sqlite store (`retry`)."""
