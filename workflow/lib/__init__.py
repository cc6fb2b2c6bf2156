"""What the workflow's rules and jobs import beyond the method package: the plan (methods, grids, paths,
each job's overrides), the paper's tables, the report's figures, the gallery and the launch prefix."""
