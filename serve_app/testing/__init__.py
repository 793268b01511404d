"""Test and benchmark helpers shipped with the package: synthetic pages, a document set with
ground truth, app starters, an OTLP sink. May import: everything."""
