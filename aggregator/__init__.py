"""Self-hosted feed aggregator: full text, duplicates dropped, one daily email digest."""

__version__ = "0.1.0"
