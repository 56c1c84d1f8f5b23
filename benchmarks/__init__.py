"""The backend comparison suite (`stratum bench`): dataset presets, workloads, reports.

Every backend answers the same questions over the same data: warm raw (psycopg, the
original design), warm rollups, bare DuckDB over the lake's files (the practical limit),
the engine in process, and the HTTP API (JSON pages, Arrow stream).
"""
