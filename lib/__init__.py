"""persona-replication: the thin library that the notebooks under notebooks/ import.

Everything a notebook needs twice, or that is worth a test, lives here once.
"""
