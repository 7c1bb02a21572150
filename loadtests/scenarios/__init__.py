"""Locust scenarios (locustfile.py), the `limits` peer behind HTTP (limits_app.py) and their runner (run.py)."""
