"""secvma.arch."""
