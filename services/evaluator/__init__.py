"""Evaluation worker (queue ``eval``): the metric protocol of ``gmpi_core.eval`` → ``report.json``."""
