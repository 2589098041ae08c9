"""End-to-end tests: a real Prefect server, a process work pool with a worker, and headless Chromium."""
