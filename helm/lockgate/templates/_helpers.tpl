{{/* Names and labels. */}}
{{- define "lockgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "lockgate.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "lockgate.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "lockgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "lockgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "lockgate.labels" -}}
helm.sh/chart: {{ include "lockgate.chart" . }}
{{ include "lockgate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "lockgate.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion | toString) }}
{{- end }}

{{/* Where the chart's Secret and ConfigMaps sit in the pod. */}}
{{- define "lockgate.configDir" -}}/etc/lockgate/config{{- end }}
{{- define "lockgate.configPath" -}}{{ include "lockgate.configDir" . }}/lockgate.toml{{- end }}
{{- define "lockgate.policyDir" -}}/etc/lockgate/policies{{- end }}
{{- define "lockgate.dataDir" -}}/var/lib/lockgate/data{{- end }}

{{/* Which secrets the chart writes itself (the rest come from existingSecret). */}}
{{- define "lockgate.ownsApiKeys" -}}
{{- if not .Values.auth.existingSecret }}true{{ end }}
{{- end }}
{{- define "lockgate.ownsRedisUrl" -}}
{{- if and (not .Values.store.embedded.enabled) (not .Values.store.existingSecret) }}true{{ end }}
{{- end }}

{{/*
Settings the chart sets through the environment (it wins over the TOML file), so
.Values.config may not carry them: each maps to LOCKGATE_<NAME> in the StatefulSet.
*/}}
{{- define "lockgate.managedSettings" -}}
{{- list "host" "port" "grpc_port" "redis_url" "data_dir" "api_keys" "policy_files" "require_fsync_always" "advertise_url" | toJson }}
{{- end }}

{{/*
Refuse values the server cannot run with, before anything reaches the cluster.
Defaults below mirror the server's (Settings.commit_timeout_ms, limits.GRPC_STOP_GRACE_S,
EmbeddedValkey.stop's wait); tests/test_helm_chart.py checks them against the code.
*/}}
{{- define "lockgate.validate" -}}
{{- $replicas := int .Values.replicaCount }}
{{- if lt $replicas 0 }}
{{- fail (printf "lockgate: replicaCount is %d; use 0 to stop the service" $replicas) }}
{{- end }}
{{- if and .Values.store.embedded.enabled (gt $replicas 1) }}
{{- fail (printf "lockgate: replicaCount is %d, but store.embedded.enabled gives each pod a store of its own, so the pods would not share locks or limits: set replicaCount=1, or use an external store" $replicas) }}
{{- end }}
{{- if and (not .Values.auth.existingSecret) (empty .Values.auth.apiKeys) }}
{{- fail "lockgate: set auth.apiKeys (SHA-256 hashes of your keys) or auth.existingSecret. The pod listens off loopback, where lockgate-server refuses to run without API keys (LOCKGATE_API_KEYS)." }}
{{- end }}
{{- if not .Values.auth.existingSecret }}
{{- range $index, $key := .Values.auth.apiKeys }}
{{- if not (regexMatch "^[0-9a-f]{64}$" (toString (get $key "sha256"))) }}
{{- fail (printf "lockgate: auth.apiKeys[%d].sha256 must be the SHA-256 of the key in 64 lower-case hex digits, never the key itself" $index) }}
{{- end }}
{{- end }}
{{- end }}
{{- if .Values.store.embedded.enabled }}
{{- if or .Values.store.redisUrl .Values.store.existingSecret }}
{{- fail "lockgate: store.embedded.enabled runs a Valkey inside the pod; unset store.redisUrl and store.existingSecret, or turn embedded off" }}
{{- end }}
{{- else if and (not .Values.store.redisUrl) (not .Values.store.existingSecret) }}
{{- fail "lockgate: set store.redisUrl or store.existingSecret: an external Redis 7+/Valkey with appendonly yes and appendfsync always (LOCKGATE_REDIS_URL). store.embedded.enabled=true runs a Valkey inside the pod, for development only." }}
{{- end }}
{{- if and .Values.store.redisUrl (not .Values.store.existingSecret) (not (or (hasPrefix "redis://" .Values.store.redisUrl) (hasPrefix "rediss://" .Values.store.redisUrl))) }}
{{- fail "lockgate: store.redisUrl must be a redis:// or rediss:// (TLS) URL: the commit connection speaks RESP over TCP (no unix://)" }}
{{- end }}
{{- $managed := include "lockgate.managedSettings" . | fromJsonArray }}
{{- range $name, $_ := .Values.config }}
{{- if has $name $managed }}
{{- fail (printf "lockgate: config.%s is set by the chart from its own values (listenHost, ports, auth, store, policies); set it there" $name) }}
{{- end }}
{{- end }}
{{- $http := int .Values.ports.http }}
{{- $grpc := int .Values.ports.grpc }}
{{- if or (lt $http 1) (gt $http 65535) (lt $grpc 0) (gt $grpc 65535) (eq $http $grpc) }}
{{- fail (printf "lockgate: ports.http (%d) must be 1-65535 and ports.grpc (%d) 0-65535 (0: off), and they must differ" $http $grpc) }}
{{- end }}
{{- $commitTimeoutMs := int (get (.Values.config | default dict) "commit_timeout_ms" | default 5000) }}
{{- $needed := add (div (add (mul 2 $commitTimeoutMs) 999) 1000) 2 }}
{{- if .Values.store.embedded.enabled }}
{{- $needed = add $needed 10 }}
{{- end }}
{{- if lt (int .Values.terminationGracePeriodSeconds) $needed }}
{{- fail (printf "lockgate: terminationGracePeriodSeconds is %d; a clean stop can take %d s (2 x commit_timeout_ms, gRPC's 2 s%s)" (int .Values.terminationGracePeriodSeconds) $needed (ternary ", the embedded Valkey's 10 s" "" .Values.store.embedded.enabled)) }}
{{- end }}
{{- end }}
