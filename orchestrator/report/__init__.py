"""What a user reads: the end-of-sweep summary, the report's plots and HTML page, and the
MLflow UI's direct links."""
