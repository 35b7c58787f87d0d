"""The run engine: the only code that writes a run's state.

:mod:`~django_dataflows.runs.transitions` defines every change of a run's status once;
the executor, run control, the heartbeat's reaper and the backends' hand-over carry them
out through it, on any database through the ORM and, on PostgreSQL's worker path, as one
statement each.
"""
