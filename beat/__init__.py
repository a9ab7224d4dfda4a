"""Celery Beat: the nightly schedule (data, from the pipeline registry) and its entry point."""
