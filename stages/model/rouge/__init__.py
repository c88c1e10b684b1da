"""ROUGE as a local `evaluate` module: `evaluate.load("stages/model/rouge")`."""
