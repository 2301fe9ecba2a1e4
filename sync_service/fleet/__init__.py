"""Fleet health: device heartbeats into per-device state, problems, metrics and alarms (cloud)."""
