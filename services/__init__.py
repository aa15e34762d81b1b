"""The GMPI service stack: a FastAPI gateway and Celery workers, each a thin shell over ``gmpi_core``."""
