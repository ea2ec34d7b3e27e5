"""The training side: datasets, search spaces, the Tune trainable, MLflow logging and registry."""
