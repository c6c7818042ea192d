{{/* Names ------------------------------------------------------------------------------- */}}
{{- define "citystream.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "citystream.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* "<fullname>-<component>", for a dict with "root" and "component". */}}
{{- define "citystream.componentName" -}}
{{- printf "%s-%s" (include "citystream.fullname" .root | trunc 40 | trimSuffix "-") .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "citystream.selectorLabels" -}}
app.kubernetes.io/name: {{ include "citystream.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "citystream.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "citystream.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: citystream
{{- end -}}

{{/* Labels shared by every pod of the release (NetworkPolicy selects on them). */}}
{{- define "citystream.releaseSelector" -}}
app.kubernetes.io/name: {{ include "citystream.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "citystream.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* Settings --------------------------------------------------------------------------- */}}

{{/* A setting's effective value: .Values.config.<key>, else the app's default (given). */}}
{{- define "citystream.setting" -}}
{{- $value := index .root.Values.config .key -}}
{{- if kindIs "invalid" $value -}}{{ .default }}{{- else -}}{{ include "citystream.settingValue" $value }}{{- end -}}
{{- end -}}

{{/* How a value reaches the environment: maps and lists as JSON, whole numbers without an
     exponent (Helm reads every number as float64: 1000000 would print as 1e+06). */}}
{{- define "citystream.settingValue" -}}
{{- if or (kindIs "map" .) (kindIs "slice" .) -}}
{{- toJson . -}}
{{- else if and (kindIs "float64" .) (eq (floor .) .) -}}
{{- int64 . -}}
{{- else -}}
{{- toString . -}}
{{- end -}}
{{- end -}}

{{- define "citystream.partitions" -}}
{{- include "citystream.setting" (dict "root" . "key" "partitions" "default" "6") -}}
{{- end -}}

{{- define "citystream.topicPrefix" -}}
{{- include "citystream.setting" (dict "root" . "key" "topicPrefix" "default" "") -}}
{{- end -}}

{{/* Consumer groups as the app derives them: topic prefix + id (Settings.group). */}}
{{- define "citystream.processorGroup" -}}
{{- include "citystream.topicPrefix" . -}}{{- include "citystream.setting" (dict "root" . "key" "processorId" "default" "citystream-processors") -}}
{{- end -}}

{{- define "citystream.sinkGroup" -}}
{{- include "citystream.topicPrefix" . -}}{{- include "citystream.setting" (dict "root" . "key" "sinkGroupId" "default" "citystream-sink-clickhouse") -}}
{{- end -}}

{{- define "citystream.processorMetricsPort" -}}
{{- include "citystream.setting" (dict "root" . "key" "processorMetricsPort" "default" "9464") -}}
{{- end -}}

{{- define "citystream.processorWebPort" -}}
{{- include "citystream.setting" (dict "root" . "key" "processorWebPort" "default" "6066") -}}
{{- end -}}

{{/*
Environment of every citystream container: one CITYSTREAM_<NAME> per non-null
.Values.config.<name> (camelCase key -> SNAKE_CASE variable), then the settings that come
from existing Secrets, then .Values.extraEnv. The mapping is documented in docs/deploy.md.
*/}}
{{- define "citystream.env" -}}
{{- $root := . -}}
{{- $secrets := .Values.secrets -}}
{{- $fromSecret := dict -}}
{{- if and $secrets.kafka.existingSecret $secrets.kafka.usernameKey -}}{{- $_ := set $fromSecret "kafkaSaslUsername" true -}}{{- end -}}
{{- if and $secrets.clickhouse.existingSecret $secrets.clickhouse.usernameKey -}}{{- $_ := set $fromSecret "clickhouseUsername" true -}}{{- end -}}
{{- if and $secrets.mqtt.existingSecret $secrets.mqtt.usernameKey -}}{{- $_ := set $fromSecret "mqttUsername" true -}}{{- end -}}
{{- range $key := keys .Values.config | sortAlpha }}
{{- $value := index $root.Values.config $key }}
{{- if and (not (kindIs "invalid" $value)) (not (hasKey $fromSecret $key)) }}
- name: CITYSTREAM_{{ $key | snakecase | upper }}
  value: {{ include "citystream.settingValue" $value | quote }}
{{- end }}
{{- end }}
{{- with $secrets.kafka }}
{{- if .existingSecret }}
{{- if .usernameKey }}
- name: CITYSTREAM_KAFKA_SASL_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ .existingSecret | quote }}
      key: {{ .usernameKey | quote }}
{{- end }}
{{- if .passwordKey }}
- name: CITYSTREAM_KAFKA_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .existingSecret | quote }}
      key: {{ .passwordKey | quote }}
{{- end }}
{{- end }}
{{- end }}
{{- with $secrets.schemaRegistry }}
{{- if .existingSecret }}
{{- if .basicAuthKey }}
- name: CITYSTREAM_SCHEMA_REGISTRY_BASIC_AUTH
  valueFrom:
    secretKeyRef:
      name: {{ .existingSecret | quote }}
      key: {{ .basicAuthKey | quote }}
{{- else if and .usernameKey .passwordKey }}
- name: SCHEMA_REGISTRY_USER
  valueFrom:
    secretKeyRef:
      name: {{ .existingSecret | quote }}
      key: {{ .usernameKey | quote }}
- name: SCHEMA_REGISTRY_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .existingSecret | quote }}
      key: {{ .passwordKey | quote }}
- name: CITYSTREAM_SCHEMA_REGISTRY_BASIC_AUTH
  value: "$(SCHEMA_REGISTRY_USER):$(SCHEMA_REGISTRY_PASSWORD)"
{{- else }}
{{- fail "secrets.schemaRegistry: set basicAuthKey (a \"user:password\" value) or both usernameKey and passwordKey" }}
{{- end }}
{{- end }}
{{- end }}
{{- with $secrets.clickhouse }}
{{- if .existingSecret }}
{{- if .usernameKey }}
- name: CITYSTREAM_CLICKHOUSE_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ .existingSecret | quote }}
      key: {{ .usernameKey | quote }}
{{- end }}
{{- if .passwordKey }}
- name: CITYSTREAM_CLICKHOUSE_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .existingSecret | quote }}
      key: {{ .passwordKey | quote }}
{{- end }}
{{- end }}
{{- end }}
{{- with $secrets.statements }}
{{- if and .existingSecret .signingKeyKey }}
- name: CITYSTREAM_STATEMENT_SIGNING_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .existingSecret | quote }}
      key: {{ .signingKeyKey | quote }}
{{- end }}
{{- end }}
{{- with $secrets.audit }}
{{- if and .existingSecret .signingKeyKey }}
- name: CITYSTREAM_AUDIT_SIGNING_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .existingSecret | quote }}
      key: {{ .signingKeyKey | quote }}
{{- end }}
{{- end }}
{{- with $secrets.privacy }}
{{- if and .existingSecret .pseudonymKeysKey }}
- name: CITYSTREAM_PRIVACY_PSEUDONYM_KEYS
  valueFrom:
    secretKeyRef:
      name: {{ .existingSecret | quote }}
      key: {{ .pseudonymKeysKey | quote }}
{{- end }}
{{- end }}
{{- with $secrets.ingest }}
{{- if and .existingSecret .apiKeysKey }}
- name: CITYSTREAM_INGEST_API_KEYS
  valueFrom:
    secretKeyRef:
      name: {{ .existingSecret | quote }}
      key: {{ .apiKeysKey | quote }}
{{- end }}
{{- end }}
{{- with $secrets.api }}
{{- if and .existingSecret .apiKeysKey }}
- name: CITYSTREAM_API_KEYS
  valueFrom:
    secretKeyRef:
      name: {{ .existingSecret | quote }}
      key: {{ .apiKeysKey | quote }}
{{- end }}
{{- end }}
{{- with $secrets.mqtt }}
{{- if .existingSecret }}
{{- if .usernameKey }}
- name: CITYSTREAM_MQTT_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ .existingSecret | quote }}
      key: {{ .usernameKey | quote }}
{{- end }}
{{- if .passwordKey }}
- name: CITYSTREAM_MQTT_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .existingSecret | quote }}
      key: {{ .passwordKey | quote }}
{{- end }}
{{- end }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The ingest config file: its ConfigMap, and where the ingest pods see it. */}}
{{- define "citystream.ingestConfigMap" -}}
{{- .Values.sources.ingestConfig.existingConfigMap | default (include "citystream.componentName" (dict "root" . "component" "ingest-config")) -}}
{{- end -}}

{{- define "citystream.ingestConfigPath" -}}
{{- if or .Values.sources.ingestConfig.content .Values.sources.ingestConfig.existingConfigMap -}}
/etc/citystream/ingest/{{ .Values.sources.ingestConfig.key }}
{{- end -}}
{{- end -}}

{{- define "citystream.ingestHttpPort" -}}
{{- include "citystream.setting" (dict "root" . "key" "ingestHttpPort" "default" "8090") -}}
{{- end -}}

{{/* Pod-level pieces --------------------------------------------------------------------- */}}

{{/* The pod spec shared by every workload; dict: root, component, containers (YAML),
     volumes (YAML, extra), restartPolicy (optional), values (the component's values). */}}
{{- define "citystream.podSpec" -}}
{{- $root := .root -}}
{{- $v := .values -}}
{{- with $root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- if $root.Values.serviceAccountName }}
serviceAccountName: {{ $root.Values.serviceAccountName }}
{{- end }}
automountServiceAccountToken: false
{{- with .restartPolicy }}
restartPolicy: {{ . }}
{{- end }}
securityContext:
  {{- toYaml $root.Values.podSecurityContext | nindent 2 }}
{{- with (default $root.Values.priorityClassName $v.priorityClassName) }}
priorityClassName: {{ . }}
{{- end }}
{{- with $v.terminationGracePeriodSeconds }}
terminationGracePeriodSeconds: {{ . }}
{{- end }}
containers:
  {{- .containers | nindent 2 }}
volumes:
  - name: data
    emptyDir: {}
  - name: tmp
    emptyDir: {}
  {{- with .volumes }}
  {{- . | nindent 2 }}
  {{- end }}
  {{- with $root.Values.extraVolumes }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- with (default $root.Values.nodeSelector $v.nodeSelector) }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with (default $root.Values.tolerations $v.tolerations) }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with (default $root.Values.affinity $v.affinity) }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* The fields of a citystream container other than name, args, ports and probes. */}}
{{- define "citystream.containerCommon" -}}
{{- $root := .root -}}
image: {{ include "citystream.image" $root | quote }}
imagePullPolicy: {{ $root.Values.image.pullPolicy }}
securityContext:
  {{- toYaml $root.Values.securityContext | nindent 2 }}
env:
  {{- include "citystream.env" $root | trim | nindent 2 }}
{{- with $root.Values.extraEnvFrom }}
envFrom:
  {{- toYaml . | nindent 2 }}
{{- end }}
resources:
  {{- toYaml (.values.resources | default dict) | nindent 2 }}
volumeMounts:
  - name: data
    mountPath: /var/lib/citystream
  - name: tmp
    mountPath: /tmp
  {{- with .mounts }}
  {{- . | nindent 2 }}
  {{- end }}
  {{- with $root.Values.extraVolumeMounts }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end -}}

{{- define "citystream.podMetadata" -}}
labels:
  {{- include "citystream.selectorLabels" (dict "root" .root "component" .component) | nindent 2 }}
  {{- with .root.Values.podLabels }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- $annotations := merge (dict) (.values.podAnnotations | default dict) (.root.Values.podAnnotations | default dict) }}
{{- with $annotations }}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Checks that fail the render with a message, before anything reaches a cluster. */}}
{{- define "citystream.validate" -}}
{{- $partitions := include "citystream.partitions" . | int -}}
{{- $p := .Values.processor -}}
{{- if and $p.enabled (gt (int $p.replicas) $partitions) -}}
{{- fail (printf "processor.replicas (%d) must not exceed config.partitions (%d): each input partition's windows live on one worker" (int $p.replicas) $partitions) -}}
{{- end -}}
{{- if and $p.autoscaling.keda.enabled $p.autoscaling.hpa.enabled -}}
{{- fail "processor.autoscaling: enable keda or hpa, not both" -}}
{{- end -}}
{{- if and $p.autoscaling.keda.enabled (gt (int $p.autoscaling.keda.maxReplicas) $partitions) -}}
{{- fail (printf "processor.autoscaling.keda.maxReplicas (%d) must not exceed config.partitions (%d)" (int $p.autoscaling.keda.maxReplicas) $partitions) -}}
{{- end -}}
{{- if and $p.autoscaling.hpa.enabled (gt (int $p.autoscaling.hpa.maxReplicas) $partitions) -}}
{{- fail (printf "processor.autoscaling.hpa.maxReplicas (%d) must not exceed config.partitions (%d)" (int $p.autoscaling.hpa.maxReplicas) $partitions) -}}
{{- end -}}
{{- if and .Values.sink.enabled (gt (int .Values.sink.replicas) $partitions) -}}
{{- fail (printf "sink.replicas (%d) must not exceed config.partitions (%d)" (int .Values.sink.replicas) $partitions) -}}
{{- end -}}
{{- end -}}
