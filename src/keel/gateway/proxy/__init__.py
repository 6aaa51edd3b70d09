"""The gateway's built-in reverse proxy: upstream pools, balancing, health, retries, streaming."""
