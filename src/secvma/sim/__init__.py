"""A simulated testbed machine in pure Python: guest RAM in a bytearray, a recording vCPU, the
testbed kernel's boot tables and an EL1 CPU model that executes one store at a time through the
real stage-1 + stage-2 walk. KPCore's logic tests and `secvma fuzz`'s fast tier drive KPCore's
trap handlers through it (the `Platform` protocol, nothing of QEMU)."""
