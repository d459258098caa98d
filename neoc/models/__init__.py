"""Model components: one model a file."""
