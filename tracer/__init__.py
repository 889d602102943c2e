"""closewait: find TCP sockets a process never closed after the peer did.

Subpackages by job (README "Architecture"): kernel/ (BPF) and system/
(sock_diag, /proc) read; core/ is pure logic over what they read; engine/
runs refreshes; report/ renders; cli/ parses arguments and maps errors.
"""

__version__ = "0.1.0"
