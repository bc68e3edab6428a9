"""The search: Tune's tuner (Optuna searcher, ASHA), the persisted Optuna study and the extension
of a finished sweep by more trials."""
