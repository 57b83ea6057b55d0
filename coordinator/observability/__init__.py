"""What an operator sees of a replica: Prometheus metrics, OpenTelemetry traces, and the
status an admin asks for. Nothing here changes what a call does; all of it is cheap on the
hot path and free when switched off."""
