"""What every part stands on: the run-folder contract and atomic writes, shipped artefacts, safe weight
loading, the registry, MLflow tracking."""
