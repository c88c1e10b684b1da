"""Local `evaluate` metric modules (loaded by path: no hub access at run time)."""
