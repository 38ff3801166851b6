"""taskqueue-exporter: Prometheus metrics for Celery and RQ queues on Redis."""

from exporter.celery_hook import instrument_celery

__all__ = ["instrument_celery"]
