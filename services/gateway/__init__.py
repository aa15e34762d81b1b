"""The REST gateway (FastAPI): datasets, jobs, models, sync renders, health and metrics."""
