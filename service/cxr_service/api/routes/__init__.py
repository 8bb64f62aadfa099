"""Route modules of the API, one concern each."""
