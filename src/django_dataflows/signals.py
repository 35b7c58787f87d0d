"""Signals sent as runs move through their lifecycle.

Every signal is sent with ``sender`` set to the :class:`~django_dataflows.models.DataFlow`
class and these keyword arguments:

``run_enqueued``, ``run_started``, ``run_finished``
    ``run`` (the ``DataFlowRun``), ``data_flow``, ``flow_name``, ``run_id``, ``attempt``,
    ``status``, and ``duration`` (a ``timedelta`` once the run has ended, else ``None``).

``run_step_finished``
    The same, plus ``step``: the ``DataFlowRunStep`` that has just ended (``success``,
    ``failed`` or ``cancelled``), with its ``name``, ``position``, ``status``,
    ``duration_ms``, ``result`` and ``error_message``.

``heartbeat_finished``
    ``result`` (the :class:`~django_dataflows.scheduling.HeartbeatResult`).

``runs_changed``
    ``run_ids`` (a list of ``DataFlowRun`` primary keys), sent with ``sender`` set to the
    ``DataFlowRun`` class after the transaction that wrote those runs or their steps has
    committed. The live status event sources that publish changes (PostgreSQL
    ``LISTEN/NOTIFY``, Redis) listen to it; it is only sent while someone listens.
``flow_overdue``
    ``data_flow`` and ``since`` (the instant it became overdue): sent by the heartbeat once
    per overdue episode, which the flow's next successful run ends.
``run_late``
    ``run`` (the ``DataFlowRun``, with its ``data_flow``) and ``since`` (when the heartbeat
    found it in progress past its flow's ``max_duration``): sent once per run; the run
    goes on.

Receivers run inside the worker that executes the flow. An exception in a receiver is
logged and never changes the run's outcome.
"""

from __future__ import annotations

from django.dispatch import Signal

run_enqueued = Signal()
run_started = Signal()
run_finished = Signal()
run_step_finished = Signal()
heartbeat_finished = Signal()
runs_changed = Signal()
flow_overdue = Signal()
run_late = Signal()
