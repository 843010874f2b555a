"""The request/response log, in the format of KServe's inference logger.

In the cluster the KServe agent beside each predictor sends every request and response as
a CloudEvent in HTTP binary mode; `kubeloop.cloudevents` lists its attributes.

The local logger sends the same attributes, with ce-source its URI and ce-endpoint
"default"/"canary" (as KServe did before v1beta1), plus three extensions that say outright
what the drift detector otherwise derives (`kubeloop.drift.events.parse_event`):

    ce-revision             the revision that served: `<isvc>-<component>-<version>` locally
                            (one predictor process per version), the Knative revision name in
                            a cluster (read there off ce-source)
    ce-modelversion         the registry version that answered
    ce-variant              "primary" or "canary", the router's own routing decision

Locally the router does the agent's job. `CloudEventLogger` turns one exchange (request
body, response body, variant, version, latency, status) into that pair of events and
hands it to a background thread, so the request path only enqueues: the thread writes the
events to a `RequestLogSink` (SQLite by default, or a JSONL file) with the variant, model
version, latency and status code as extra columns, and optionally POSTs them to HTTP
consumers (the drift detector) with `cloudevents.conversion.to_binary`. Like the KServe
agent it forwards only responses with status 200; the local sink keeps every response,
so errors can be counted per variant. A full queue or a failed POST drops the event and
counts it (`CloudEventLogger.stats`), it never slows a request down.

Modules: `events` (LoggedEvent, Exchange), `sinks` (RequestLogSink, SQLiteRequestLog,
JSONLRequestLog, open_sink, iter_events), `logger` (CloudEventLogger) and `reader`
(`exchanges_frame`: one row per request, joined with its response).
"""
