"""Runnable examples of analytics_queue (not part of the installed package)."""
