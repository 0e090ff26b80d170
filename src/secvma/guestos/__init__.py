"""The Debian guest's userspace for the application benchmarks: root filesystem and console agent."""
