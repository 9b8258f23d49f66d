"""The Celery worker: thin tasks around the DeepDream engine."""
