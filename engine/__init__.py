"""The query side of stratum: settings, metric registry, queries, planning, execution."""
