"""On-device benchmarks (issue 6); not built yet."""
