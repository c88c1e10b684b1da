"""What users run: the `soqa` command line, asking the model, the funnel and the quality report."""
