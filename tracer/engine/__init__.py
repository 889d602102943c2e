"""The engines that join kernel/ and system/ readings through core/: the
watch engine (one refresh, and the loop that reports), and the snapshot.
Commands (cli/) and, later, the exporter drive the same engine."""
