"""Self-contained HTML reports of eval runs and sweeps (``mmrag report RUN_DIR``)."""
