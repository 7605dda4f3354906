"""Helpers for the core tests: a minimal HTTP channel and scripts run as child processes."""
