"""The wire of heartbeat_sync."""
