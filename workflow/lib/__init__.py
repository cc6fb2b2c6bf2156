"""What the workflow's jobs import beyond the method package: the paper's tables and the report's figures."""
