"""Code shared by the gateway and the workers: settings, storage, the Celery app, job records."""
