"""How an experiment runs: config, CLI, the Ray Train driver and worker loop, clipping,
checkpoints, MLflow tracking."""
