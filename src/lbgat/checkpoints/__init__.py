"""Checkpoints and exported model folders: writing and reading them without running code, and checking what
they hold before anything uses it."""
