"""The built-in demo's workload (a keep-alive HTTP server and a pooled
client), run as separate processes by `closewait demo` and by the tests."""
