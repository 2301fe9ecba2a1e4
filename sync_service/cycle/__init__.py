"""The nightly cycle: scheduled ingest, build, publish and prune (cloud)."""
