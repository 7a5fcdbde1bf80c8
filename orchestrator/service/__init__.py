"""``caviar up``: the compose topology (Ray head, Ray workers, MLflow server) as local
processes that stay up between sweeps, plus a warm sweep driver that ``caviar run`` hands its
spec to. ``state`` owns the state folder and the process records, ``up`` starts, checks and
stops the services, ``driver`` is the long-lived driver and ``client`` the ``caviar run`` side
of it; ``commands`` holds the CLI's ``up``, ``down`` and ``ps``."""
