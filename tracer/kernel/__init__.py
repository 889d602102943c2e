"""The BPF side: preflight checks, compile and attach bpf/closewait.bpf.c,
read its maps, receive its events, detach. Every BCC call lives here, and
everything it returns is a record of tracer.core.model."""
