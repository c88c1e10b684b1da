"""ROUGE as a local `evaluate` module: `evaluate.load("stages/metrics/rouge")`."""
