"""Output formats: JSON Lines, CSV and Parquet writers, and the Arrow columnar path."""
