"""What the host says now, read-only: sock_diag per network namespace, /proc
(fd tables, names, cgroups, limits), which processes are targets, and the
gathering of one observation. Every race with a live system (a process
exiting mid-read) is an ordinary outcome here, never an exception."""
