"""closewait: find TCP sockets a process never closed after the peer did.

The package is split by job: pure logic (correlate, ageing, render) apart
from I/O (kernel_probe for BPF, sockdiag for netlink, procfs for /proc), so
the logic is tested in milliseconds and the I/O against the real kernel.
"""

__version__ = "0.1.0"
