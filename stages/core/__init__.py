"""Mechanics every stage shares: schemas, params, atomic outputs, parquet I/O, the audit ledger,
executors, the stage runner and the quality-gate runner. Nothing here knows a particular stage."""
