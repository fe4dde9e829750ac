"""Waiting until a container's service really answers.

Three traps shape this module:

* A published port accepts TCP before the app listens: the port publisher
  (docker-proxy) takes the connection and only then finds nobody behind it. So
  "connect succeeded" proves nothing. We read the container's own socket table and
  wait for the app's LISTEN socket: from ``/proc/<pid>/net`` where the engine is
  local, through ``exec`` of ``cat`` (or ``sh``) where it is not.
* The engine runs an image's first HEALTHCHECK one interval after start (30 s by
  default). We run the same check ourselves with ``exec`` while we wait, and
  still honour the engine's verdict when it says ``unhealthy``.
* A container that exits while we wait must fail the wait at once, not at the
  timeout.
"""
