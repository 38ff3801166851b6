"""The demo: a small Celery app, a bursty load generator and `make demo`'s runner.

Not part of the installed distribution: `make demo` and the compose stack run it from
the repository with the repository on PYTHONPATH.
"""
