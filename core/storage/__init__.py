"""Result storage: the Parquet schema (shared by writers and readers) and MLflow tracking."""
