"""HTTP edge of the concurrency service."""
