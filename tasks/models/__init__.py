"""Model families, building, inference, compression, metrics and the MLflow serving model."""
