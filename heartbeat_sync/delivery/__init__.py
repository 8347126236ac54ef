"""The delivery of heartbeat_sync."""
