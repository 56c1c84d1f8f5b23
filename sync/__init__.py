"""The write side of stratum: warm-store schema, ingest, rollups, lake sync, tiering, jobs."""
