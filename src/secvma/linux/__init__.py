"""Driver of the unmodified Debian kernel: userspace workloads and attacks from a real module.

`kbuild` prepares Debian's own out-of-tree build tree for the fixture kernel, `guestbuild`
builds the static userspace helper and the `secvma_lkdtm` module and packs the initramfs,
`session` boots the kernel and parses the helper's report lines, `attacks` is the catalogue.
"""
