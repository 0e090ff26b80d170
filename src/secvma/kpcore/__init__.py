"""secvma.kpcore."""
