"""The loop of heartbeat_sync."""
