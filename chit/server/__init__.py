"""chit server."""
