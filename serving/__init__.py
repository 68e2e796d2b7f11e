"""Serving: Chronos models behind Ray Serve, batch inference, and streaming forecasts.

- :mod:`serving.forecaster`: a plain ``Forecaster`` (no Ray) around any Chronos pipeline;
- :mod:`serving.models`: which model to serve (hub, local dir, ``s3://``, registry, bundled);
- :mod:`serving.app`: the Ray Serve application (``serving.app:build_app``);
- :mod:`serving.batch`: batch forecasts over the lake on Ray actors;
- :mod:`serving.streaming`: the streaming forecaster that calls the HTTP API.

Importing the package is cheap: torch, chronos and ray load inside the modules that need them.
"""
