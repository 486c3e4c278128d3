"""Build-time tools run from the repository root as ``python -m tools.<name>``: benchmarks,
soak and stress runs, measurements, the screenshot and the example photos. Never imported by
the server."""
