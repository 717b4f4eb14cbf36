"""``vmtest run --matrix crash-states``: crash states from a write log (issue 17)."""
