"""Code that runs inside Ray processes: the trial loop, its data, the stage store and the final
evaluation. Imports torch and Ray, never MLflow or :mod:`orchestration.tracking` (checked by
``tests/orchestration/test_layout.py``): records go back to the driver in Tune reports."""
