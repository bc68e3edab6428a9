"""MLflow I/O, on the driver only: the sweep's sender thread, the parent/child/stage runs, the
model and dataset lineage, figures and the summaries built from the runs."""
