"""Prefect tasks: thin wrappers, one retryable stage boundary each, with an explicit cache policy."""
