"""The only code that talks to PostgreSQL, S3 and RabbitMQ."""
