"""secvma.arch: ARMv8-A facts as pure functions (no state, no I/O).

Modules:
    descriptors  VMSAv8-64 stage-1/stage-2 descriptors (4KB granule), geometry helpers, S2Perm
    sysregs      system-register name <-> (op0, op1, CRn, CRm, op2); MSR/MRS encode/decode
    esr          ESR_ELx decode/encode (EC, data/instruction abort ISS, sysreg traps, HVC/SMC)
    insn         decode of the A64 store instructions a trapped page-table write can be
    walk         translation-table walker (stage 1, stage 2, both) with named visitors
"""
