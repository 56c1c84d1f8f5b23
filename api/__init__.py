"""Interfaces: the Litestar app and the `stratum` CLI. Parses input, renders results."""
