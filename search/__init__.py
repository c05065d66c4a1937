"""Search: studies, executors, the `bitsearch` CLI and the HTTP API."""
