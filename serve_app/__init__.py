"""DeepSeek-OCR serving without the Ray glue, in layers; a module imports only its own layer
and those listed before it (``tests/unit/test_layers.py`` checks it):

errors -> core -> config -> telemetry -> checkpoint -> engine -> documents -> jobs -> api, then
``deployments/`` (Ray Serve), tooling and testing. ``errors`` and ``config`` are what every
layer shares.
"""
