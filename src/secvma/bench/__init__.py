"""secvma.bench."""
