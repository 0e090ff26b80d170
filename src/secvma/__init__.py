"""secvma: SECvma's kernel protection for Arm, rebuilt in Python on QEMU's virt board."""

__version__ = "0.1.0"
