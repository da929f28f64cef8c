"""``image2prompt batch --ray``: the batch job on Ray Data (see :mod:`.driver`)."""

from .cluster import RAY_MISSING, RayMissingError, RayRunError
from .driver import RunSummary, run_on_ray

__all__ = ["RAY_MISSING", "RayMissingError", "RayRunError", "RunSummary", "run_on_ray"]
