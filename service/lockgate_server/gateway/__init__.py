"""Rate limiting for API gateways (docs/gateways.md).

policy        the policy model: domain -> nested descriptors -> limit (envoyproxy/ratelimit's
              YAML format, plus Lockgate's extensions)
loader        reads policy files (YAML, TOML, JSON) into that model
matcher       compiles a policy and matches a request's descriptors, most specific first
decision      the matched limits of one request as one all-or-nothing RateCheckAll
registry      the policies in force: files, plus runtime changes persisted in the store
request_data  descriptor entries from the data an HTTP gateway forwards
headers       RateLimit / RateLimit-Policy / X-RateLimit-* / Retry-After from a verdict
telemetry     metrics per domain and configured limit, never per key
http_check    the check endpoint (nginx auth_request, Traefik ForwardAuth, Envoy ext_authz) and /json
admin         /v1/admin/policies: runtime changes and resets
openapi       their part of /openapi.json, from the same tables, structs and messages
rls           the Envoy rate limit service (gRPC), messages from proto/
service       wires them together for the app and its lifespan
"""
