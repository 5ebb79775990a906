{{/* Names and labels. */}}
{{- define "tributary.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tributary.fullname" -}}
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

{{- define "tributary.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tributary.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "tributary.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "tributary.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "tributary.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tributary.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Secrets: the chart's own, or the ones named in values. */}}
{{- define "tributary.tlsEnabled" -}}
{{- if or .Values.listeners.mqtts.enabled (and .Values.listeners.ws.enabled (eq .Values.listeners.ws.transport "wss")) }}true{{ end }}
{{- end }}

{{- define "tributary.tlsSecretName" -}}
{{- .Values.tls.existingSecret | default (printf "%s-tls" (include "tributary.fullname" .)) }}
{{- end }}

{{- define "tributary.clientCA" -}}
{{- if or .Values.tls.clientCA .Values.tls.ca }}true{{ end }}
{{- end }}

{{- define "tributary.authEnabled" -}}
{{- if or .Values.auth.existingSecret .Values.auth.passwords }}true{{ end }}
{{- end }}

{{- define "tributary.aclEnabled" -}}
{{- if .Values.auth.existingSecret }}{{ if .Values.auth.existingSecretHasACL }}true{{ end }}
{{- else if .Values.auth.acl }}true{{ end }}
{{- end }}

{{- define "tributary.authSecretName" -}}
{{- .Values.auth.existingSecret | default (printf "%s-auth" (include "tributary.fullname" .)) }}
{{- end }}

{{/*
terminationGracePeriodSeconds: shutdown runs up to three steps (Kafka
sources, connections, the producer's flush), each bounded by
shutdown_timeout_ms, so 3 × that, rounded up to seconds, plus 15 s.
*/}}
{{- define "tributary.terminationGracePeriodSeconds" -}}
{{- $set := .Values.terminationGracePeriodSeconds }}
{{- if or (kindIs "string" $set) (kindIs "invalid" $set) }}
{{- $ms := int64 (.Values.config.shutdown_timeout_ms | default 10000) }}
{{- add (div (add (mul 3 $ms) 999) 1000) 15 }}
{{- else }}
{{- int64 $set }}
{{- end }}
{{- end }}

{{/*
TOML rendering. Keys are written bare when TOML allows it, else quoted
("compression.type"). Whole numbers are written as integers: Helm reads
numbers from YAML as floats, which print as 1.073741824e+09 and which
Tributary's u64 settings would refuse.
*/}}
{{- define "tributary.toml.key" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . }}{{ . }}{{ else }}{{ toJson . }}{{ end }}
{{- end }}

{{- define "tributary.toml.value" -}}
{{- $v := . }}
{{- if kindIs "string" $v }}{{ toJson $v }}
{{- else if kindIs "bool" $v }}{{ $v }}
{{- else if or (kindIs "float64" $v) (kindIs "float32" $v) }}
{{- if eq (float64 (int64 $v)) (float64 $v) }}{{ int64 $v }}{{ else }}{{ $v }}{{ end }}
{{- else if kindIs "slice" $v }}[{{ range $i, $e := $v }}{{ if $i }}, {{ end }}{{ include "tributary.toml.value" $e }}{{ end }}]
{{- else if kindIs "map" $v }}{ {{- range $i, $k := keys $v | sortAlpha }}{{ if $i }},{{ end }} {{ include "tributary.toml.key" $k }} = {{ include "tributary.toml.value" (get $v $k) }}{{ end }} }
{{- else if kindIs "invalid" $v }}{{ fail "tributary: a configuration value is null; remove the key instead" }}
{{- else }}{{ $v }}
{{- end }}
{{- end }}

{{/* The key = value lines of a table; nested tables as [name.key] after them. */}}
{{- define "tributary.toml.table" -}}
{{- $t := .table }}
{{- printf "[%s]" .name }}
{{- range $k := keys $t | sortAlpha }}
{{- $v := get $t $k }}
{{- if not (kindIs "map" $v) }}
{{ include "tributary.toml.key" $k }} = {{ include "tributary.toml.value" $v }}
{{- end }}
{{- end }}
{{- range $k := keys $t | sortAlpha }}
{{- $v := get $t $k }}
{{- if kindIs "map" $v }}

{{ include "tributary.toml.table" (dict "name" (printf "%s.%s" $.name (include "tributary.toml.key" $k)) "table" $v) }}
{{- end }}
{{- end }}
{{- end }}

{{/* One [[name]] entry: every value inline (inline tables for maps). */}}
{{- define "tributary.toml.entry" -}}
{{- $t := .table }}
{{- printf "[[%s]]" .name }}
{{- range $k := keys $t | sortAlpha }}
{{ include "tributary.toml.key" $k }} = {{ include "tributary.toml.value" (get $t $k) }}
{{- end }}
{{- end }}

{{/* One device listener: [[listeners]] with the chart's paths. */}}
{{- define "tributary.listener" -}}
{{- $root := .root }}
{{- $entry := dict "name" .name "transport" .transport "listen" (printf "%s:%d" $root.Values.listenAddress (int64 .port)) }}
{{- if has .transport (list "tls" "wss") }}
{{- $_ := set $entry "cert_file" "/etc/tributary/tls/tls.crt" }}
{{- $_ := set $entry "key_file" "/etc/tributary/tls/tls.key" }}
{{- if include "tributary.clientCA" $root }}
{{- $_ := set $entry "client_ca_file" "/etc/tributary/tls/ca.crt" }}
{{- end }}
{{- end }}
{{- range $k, $v := .settings }}
{{- if has $k (list "name" "transport" "listen" "cert_file" "key_file" "client_ca_file") }}
{{- fail (printf "tributary: listeners.%s.settings.%s is set by the chart (see values.yaml)" $.name $k) }}
{{- end }}
{{- $_ := set $entry $k $v }}
{{- end }}
{{- include "tributary.toml.entry" (dict "name" "listeners" "table" $entry) }}
{{- end }}

{{/* The whole tributary.toml. */}}
{{- define "tributary.config" -}}
{{- $config := .Values.config }}
{{- $known := list "shutdown_timeout_ms" "mqtt" "auth" "spool" "http" "log" "kafka" "routes" "kafka_sources" }}
{{- range $k, $_ := $config }}
{{- if not (has $k $known) }}
{{- fail (printf "tributary: config.%s is not a section Tributary knows (or the chart sets it: listeners)" $k) }}
{{- end }}
{{- end }}
{{- $mqtt := deepCopy ($config.mqtt | default dict) }}
{{- if hasKey $mqtt "listen" }}{{ fail "tributary: config.mqtt.listen is set by the chart: use listeners.*" }}{{ end }}
{{- $http := deepCopy ($config.http | default dict) }}
{{- if hasKey $http "listen" }}{{ fail "tributary: config.http.listen is set by the chart: use http.port" }}{{ end }}
{{- $_ := set $http "listen" (printf "%s:%d" .Values.listenAddress (int64 .Values.http.port)) }}
{{- $auth := deepCopy ($config.auth | default dict) }}
{{- if or (hasKey $auth "password_file") (hasKey $auth "acl_file") }}{{ fail "tributary: config.auth.password_file and acl_file are set by the chart: use auth.*" }}{{ end }}
{{- if include "tributary.authEnabled" . }}
{{- $_ := set $auth "password_file" "/etc/tributary/auth/passwd" }}
{{- end }}
{{- if include "tributary.aclEnabled" . }}
{{- $_ := set $auth "acl_file" "/etc/tributary/auth/acl" }}
{{- end }}
{{- $spool := deepCopy ($config.spool | default dict) }}
{{- if or (hasKey $spool "enabled") (hasKey $spool "dir") }}{{ fail "tributary: config.spool.enabled and dir are set by the chart: use spool.enabled" }}{{ end }}
{{- $_ := set $spool "enabled" (.Values.spool.enabled | default false) }}
{{- $_ := set $spool "dir" "/var/lib/tributary/spool" }}
# Rendered by the Tributary Helm chart from its values; see conf/tributary.toml
# for what each setting means.
shutdown_timeout_ms = {{ include "tributary.toml.value" ($config.shutdown_timeout_ms | default 10000) }}

{{ include "tributary.toml.table" (dict "name" "mqtt" "table" $mqtt) }}

{{ include "tributary.toml.table" (dict "name" "http" "table" $http) }}

{{ include "tributary.toml.table" (dict "name" "auth" "table" $auth) }}

{{ include "tributary.toml.table" (dict "name" "spool" "table" $spool) }}

{{ include "tributary.toml.table" (dict "name" "log" "table" ($config.log | default dict)) }}

{{ include "tributary.toml.table" (dict "name" "kafka" "table" ($config.kafka | default dict)) }}
{{- with .Values.listeners.mqtt }}{{ if .enabled }}

{{ include "tributary.listener" (dict "root" $ "name" "mqtt" "transport" "tcp" "port" .port "settings" .settings) }}
{{- end }}{{ end }}
{{- with .Values.listeners.mqtts }}{{ if .enabled }}

{{ include "tributary.listener" (dict "root" $ "name" "mqtts" "transport" "tls" "port" .port "settings" .settings) }}
{{- end }}{{ end }}
{{- with .Values.listeners.ws }}{{ if .enabled }}

{{ include "tributary.listener" (dict "root" $ "name" "ws" "transport" .transport "port" .port "settings" .settings) }}
{{- end }}{{ end }}
{{- range $config.routes }}

{{ include "tributary.toml.entry" (dict "name" "routes" "table" .) }}
{{- end }}
{{- range $config.kafka_sources }}

{{ include "tributary.toml.entry" (dict "name" "kafka_sources" "table" .) }}
{{- end }}
{{- end }}
