"""secvma.attacks."""
