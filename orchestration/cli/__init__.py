"""Parsing and ``--help`` of the commands (``key=value`` overrides, one-line errors, exit 2).

Runs on the driver before anything starts; never imports Ray, MLflow or Optuna (checked by
``tests/orchestration/test_layout.py``).
"""
