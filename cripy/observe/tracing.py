"""OpenTelemetry traces: a span for every CRI call and each of its steps, exported over OTLP/gRPC to
`[tracing] endpoint`.

Only this module imports OpenTelemetry (the SDK and the OTLP exporter weigh ~6 MiB and half a second of start-up),
and only a daemon with tracing enabled imports it. A call's span continues the kubelet's trace when the call's
gRPC metadata carries a W3C `traceparent` (the kubelet's otelgrpc interceptor sends one when its own tracing is
on); sampling follows the parent's decision, and `sampling_ratio` decides for calls that arrive without one.
Step spans are children of the step they run in, or of the call: concurrent steps (CNI ADD beside the infra start)
are siblings. Spans are batched and sent by the SDK's own thread.
"""

from __future__ import annotations

import logging
from typing import Any

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from cripy import __version__, timing
from cripy.rpc.wire import StatusCode as GrpcStatus

log = logging.getLogger(__name__)

EXPORT_DELAY_MS = 1000  # spans leave at most this long after they end


class Tracing:
    """A tracer provider with an OTLP exporter, and the timing sink that makes the spans."""

    def __init__(self, endpoint: str, sampling_ratio: float, service_name: str = "cripy") -> None:
        self.endpoint = endpoint
        self._provider = TracerProvider(
            resource=Resource.create({"service.name": service_name, "service.version": __version__}),
            sampler=ParentBased(TraceIdRatioBased(sampling_ratio)),
        )
        # An http:// endpoint is plain gRPC, https:// is TLS (config.validate insists on one of the two).
        self._provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint), schedule_delay_millis=EXPORT_DELAY_MS))
        self._tracer = self._provider.get_tracer("cripy", __version__)
        self._propagator = TraceContextTextMapPropagator()
        log.info("exporting traces over OTLP to %s (sampling ratio %g)", endpoint, sampling_ratio)

    def shutdown(self) -> None:
        """Send what is still batched, then stop the exporter."""
        self._provider.shutdown()

    # ---- timing.Sink ---------------------------------------------------------------------------------------

    def call_started(self, call: timing.Call, context: Any) -> None:
        parent = self._propagator.extract(_metadata(context)) if context is not None else None
        span = self._tracer.start_span(
            f"{call.service}/{call.method}", context=parent, kind=SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.service": call.service, "rpc.method": call.method},
        )
        if span.is_recording():
            subject = call.subject
            if subject:
                span.set_attribute("cripy.subject", subject)
        call.span = span

    def call_ended(self, call: timing.Call, code: str, seconds: float) -> None:
        span = call.span
        if span is None:
            return
        span.set_attribute("rpc.grpc.status_code", _code_number(code))
        if code != "OK":
            span.set_status(Status(StatusCode.ERROR, code))
        if call.joined:
            span.set_attribute("cripy.joined_retries", call.joined)
        span.end()

    def step_started(self, step: timing.Step) -> None:
        parent = step.parent.span if step.parent is not None and step.parent.span is not None else None
        if parent is None:
            parent = step.call.span if step.call is not None else None
        if parent is None:
            return  # work outside any call (recovery, background clean-up): not traced
        span = self._tracer.start_span(step.name, context=trace.set_span_in_context(parent))
        if step.detail and span.is_recording():
            span.set_attribute("cripy.detail", step.detail)
        step.span = span

    def step_ended(self, step: timing.Step, seconds: float, failed: bool) -> None:
        if step.span is None:
            return
        if failed:
            step.span.set_status(Status(StatusCode.ERROR))
        step.span.end()


def _metadata(context: Any) -> dict[str, str]:
    """The call's gRPC metadata as a carrier for the propagator (keys are lower case already)."""
    return {key: value for key, value in (context.invocation_metadata() or ()) if isinstance(value, str)}



def _code_number(code: str) -> int:
    try:
        return int(GrpcStatus[code])
    except KeyError:
        return int(GrpcStatus.UNKNOWN)
