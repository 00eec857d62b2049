"""The Redis-fed batching inference workers (issue 3)."""
