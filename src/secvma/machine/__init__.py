"""secvma.machine."""
