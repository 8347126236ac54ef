"""The effects of heartbeat_sync."""
