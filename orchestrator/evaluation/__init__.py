"""The evaluation harness behind ``ttc eval``: runner, records, summaries, reports."""
