"""What an operator watches the daemon through, each off until the configuration turns it on: Prometheus metrics
(metrics.py), OpenTelemetry traces (tracing.py); and, always on, the watchdog that names a stuck step and measures
the event loop's lag (watchdog.py). The libraries behind the first two are imported only when they are enabled."""
