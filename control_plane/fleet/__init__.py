"""The fleet plane: region agents over gRPC, health, leadership and routing snapshots.

``service`` (the runtime every replica runs), ``store`` (its view of the registry's
database), ``leader`` (leadership over the coordination backend), ``nudge`` (admin
writes wake the leader) and ``plane`` (wiring into the control-plane app). Its REST
routes live with the others, in ``control_plane.api.fleet``. A replica is run with
``meridian control-plane``.
"""
