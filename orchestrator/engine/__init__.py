"""Running a sweep on Ray Tune: the only subpackage that imports Ray's runtime. Ray's start,
the trial actor, the Tune adapters (searcher, scheduler, trial choice), the observer that turns
Tune's callbacks into journal lines and MLflow writes, the progress line, and ``run``."""
