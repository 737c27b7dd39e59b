"""Corpora -> manifest; evaluation protocols. No Ray, no MLflow."""
