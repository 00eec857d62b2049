"""The FastAPI HTTP service (issue 3)."""
