"""Load analytics_queue's own pytest plugin here, not through its entry point.

Loaded through ``pytest11`` the plugin imports the package before pytest-cov starts measuring,
so the package's module-level lines would show as uncovered. ``addopts`` disables the entry
point (``-p no:analytics_queue``) and this file loads the same plugin after coverage starts.
"""

pytest_plugins = ["analytics_queue.testing.plugin"]
