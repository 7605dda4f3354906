"""Durable delivery: the SQLite outbox, the sender threads, storm and retry limits."""
