"""The offline batch path: documents through the service's own stages on Ray Data.

:mod:`~batch.inputs` finds the documents, :mod:`~batch.plan` turns each
into one row per page, :mod:`~batch.stages` runs the service's Ray-free
preprocess, engine and postprocess classes as Ray Data stages, :mod:`~batch.output`
keeps the finished pages (Parquet, written as they finish) and each document's markdown and
JSON, and :mod:`~batch.run` (``python -m batch``) puts them together.

May import: serve_app's layers up to jobs, Ray (Ray Data) and pyarrow; nothing imports it but
tests and benchmarks.
"""
