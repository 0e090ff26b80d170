"""secvma.module."""
