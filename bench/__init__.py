"""The benchmark: drive start, heartbeat and stop with wrk and compare them with the crypto floor."""
