"""The sweep driver (the only place that knows Ray Tune) and its trial function."""
