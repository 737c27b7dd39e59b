"""The Ray layer: the only code that imports ray or mlflow."""
