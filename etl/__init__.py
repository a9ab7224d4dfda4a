"""nightly-etl: PostgreSQL chunks -> Celery chord over RabbitMQ -> parts and a manifest on S3."""

__version__ = "0.1.0"
