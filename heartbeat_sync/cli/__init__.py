"""The cli of heartbeat_sync."""
