"""catdog: label huge image archives with a CNN, through Redis, Celery workers and SQL."""

__version__ = "0.1.0"
