"""The shared-memory backend (one machine)."""
