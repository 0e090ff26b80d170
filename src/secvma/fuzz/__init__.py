"""`secvma fuzz`: bounded campaigns of random EL1 operations against KPCore (campaign.py), the
operations as replayable data (ops.py)."""
