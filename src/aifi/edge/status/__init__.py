"""The edge's local status page, ``/metrics``, ``/health`` and ``/ready``.

What the hospital sees of its own edge, with the patient's identity that
never leaves it: :mod:`aifi.edge.status.views` (plain functions, also used
by ``aifi edge tasks``), :mod:`aifi.edge.status.app` (the routes),
:mod:`aifi.edge.status.server` (uvicorn in a thread of the edge process).
"""

from aifi.edge.status.views import TaskView, parse_since, select_tasks, task_view

__all__ = ["TaskView", "parse_since", "select_tasks", "task_view"]
