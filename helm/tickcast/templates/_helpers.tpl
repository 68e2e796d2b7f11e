{{/*
Names, labels and the pieces every tickcast workload shares.
*/}}

{{- define "tickcast.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tickcast.fullname" -}}
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

{{/* A component's object name: FULLNAME-COMPONENT, within the 63-character DNS label limit. */}}
{{- define "tickcast.componentName" -}}
{{- printf "%s-%s" (include "tickcast.fullname" .root | trunc (int (sub 62 (len .component))) | trimSuffix "-") .component }}
{{- end }}

{{/*
Ray object names stay short: KubeRay appends a 5-character cluster suffix, group names and
pod hashes, and the Serve Service name (NAME-serve-svc) must stay a DNS label.
*/}}
{{- define "tickcast.rayServiceName" -}}
{{- printf "%s-serving" (include "tickcast.fullname" . | trunc 32 | trimSuffix "-") }}
{{- end }}

{{- define "tickcast.finetuneName" -}}
{{- printf "%s-finetune-%s" (include "tickcast.fullname" . | trunc 24 | trimSuffix "-") (.Values.jobs.finetune.runId | toString) | trunc 40 | trimSuffix "-" }}
{{- end }}

{{- define "tickcast.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tickcast.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tickcast.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "tickcast.labels" -}}
helm.sh/chart: {{ include "tickcast.chart" . }}
{{ include "tickcast.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tickcast
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of one component. Args: dict "root" $ "component" NAME. */}}
{{- define "tickcast.componentSelectorLabels" -}}
{{ include "tickcast.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* All labels of one component. Args: dict "root" $ "component" NAME. */}}
{{- define "tickcast.componentLabels" -}}
{{ include "tickcast.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
Every workload runs as its own ServiceAccount (its own IRSA role): values section -> the
workload name that suffixes the default ServiceAccount name (FULLNAME-WORKLOAD).
*/}}
{{- define "tickcast.serviceAccountWorkloads" -}}
producer: producer
consumer: consumer
forecaster: forecaster
dashboard: dashboard
rayService: serving
jobs: batch
maintenance: maintenance
{{- end }}

{{/* Whether a values section's workload is deployed. Args: dict "root" $ "section" NAME. Renders "true" or "". */}}
{{- define "tickcast.sectionEnabled" -}}
{{- $v := index .root.Values .section }}
{{- if eq .section "jobs" }}
{{- if or $v.backtest.enabled $v.finetune.enabled }}true{{ end }}
{{- else if eq .section "maintenance" }}
{{- if or $v.optimize.enabled $v.vacuum.enabled }}true{{ end }}
{{- else if $v.enabled }}true{{ end }}
{{- end }}

{{/*
The ServiceAccount a values section's pods run as: SECTION.serviceAccount.name, else
FULLNAME-WORKLOAD (tickcast-producer, ..., tickcast-serving, tickcast-batch,
tickcast-maintenance for a release named tickcast). Args: dict "root" $ "section" NAME.
*/}}
{{- define "tickcast.serviceAccountName" -}}
{{- $sa := (index .root.Values .section).serviceAccount }}
{{- $workload := index (include "tickcast.serviceAccountWorkloads" . | fromYaml) .section }}
{{- if $sa.create }}
{{- default (include "tickcast.componentName" (dict "root" .root "component" $workload)) $sa.name }}
{{- else }}
{{- required (printf "%s.serviceAccount.name is required when %s.serviceAccount.create is false: name an existing ServiceAccount, or set create to true" .section .section) $sa.name }}
{{- end }}
{{- end }}

{{- define "tickcast.configMapName" -}}
{{- include "tickcast.componentName" (dict "root" . "component" "config") }}
{{- end }}

{{- define "tickcast.secretName" -}}
{{- if .Values.secrets.existingSecret }}
{{- .Values.secrets.existingSecret }}
{{- else }}
{{- include "tickcast.componentName" (dict "root" . "component" "secrets") }}
{{- end }}
{{- end }}

{{/* The URL clients use to reach Serve: config.serving.url, else the RayService's serve Service. */}}
{{- define "tickcast.servingUrl" -}}
{{- if .Values.config.serving.url }}
{{- .Values.config.serving.url }}
{{- else }}
{{- printf "http://%s-serve-svc.%s.svc:%d" (include "tickcast.rayServiceName" .) .Release.Namespace (int .Values.config.serving.port) }}
{{- end }}
{{- end }}

{{/*
The URL the dashboard uses for a service's /healthz and /metrics: config.dashboard.<component>_url,
else the component's metrics Service, else nothing (the component is not deployed).
Args: dict "root" $ "component" NAME.
*/}}
{{- define "tickcast.componentUrl" -}}
{{- $root := .root }}
{{- $set := index $root.Values.config.dashboard (printf "%s_url" .component) }}
{{- if $set }}
{{- $set }}
{{- else if (index $root.Values .component).enabled }}
{{- printf "http://%s.%s.svc:%d" (include "tickcast.componentName" (dict "root" $root "component" .component)) $root.Release.Namespace (int (index $root.Values.config .component).metrics_port) }}
{{- end }}
{{- end }}

{{/*
A ClusterIP Service in front of a component's /healthz and /metrics (the dashboard's status
page and Prometheus use it). Args: dict "root" $ "component" NAME.
*/}}
{{- define "tickcast.metricsService" -}}
apiVersion: v1
kind: Service
metadata:
  name: {{ include "tickcast.componentName" (dict "root" .root "component" .component) }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "tickcast.componentLabels" (dict "root" .root "component" .component) | trim | nindent 4 }}
spec:
  type: ClusterIP
  selector:
    {{- include "tickcast.componentSelectorLabels" (dict "root" .root "component" .component) | trim | nindent 4 }}
  ports:
    - name: metrics
      port: {{ (index .root.Values.config .component).metrics_port }}
      targetPort: metrics
      protocol: TCP
{{- end }}

{{/*
An image reference. Args: dict "root" $ "image" (the component's image values).
REGISTRY/REPOSITORY:TAG, with @DIGEST when a digest is set.
*/}}
{{- define "tickcast.image" -}}
{{- $root := .root }}
{{- $registry := $root.Values.image.registry }}
{{- $tag := .image.tag | default $root.Values.image.tag | default $root.Chart.AppVersion | toString }}
{{- $repository := ternary (printf "%s/%s" $registry .image.repository) .image.repository (ne $registry "") }}
{{- if .image.digest }}
{{- printf "%s:%s@%s" $repository $tag .image.digest }}
{{- else }}
{{- printf "%s:%s" $repository $tag }}
{{- end }}
{{- end }}

{{/*
One setting's value as an environment variable string: lists and maps as JSON, whole numbers
without an exponent (Helm hands numbers over as float64), everything else as text.
*/}}
{{- define "tickcast.envValue" -}}
{{- $v := . }}
{{- if or (kindIs "slice" $v) (kindIs "map" $v) }}
{{- toJson $v }}
{{- else if and (kindIs "float64" $v) (eq $v (floor $v)) }}
{{- printf "%d" (int64 $v) }}
{{- else }}
{{- toString $v }}
{{- end }}
{{- end }}

{{/*
Checkov skips that hold for every tickcast pod, with the reason (checkov reads
checkov.io/skipN annotations as ID=reason; a reason cannot contain "=").
Args: dict "root" $ "image" (the component's image values) "secrets" (bool).
*/}}
{{- define "tickcast.checkovSkips" -}}
{{- $n := 0 }}
{{- if not .image.digest }}
{{- $n = add1 $n }}
checkov.io/skip{{ $n }}: "CKV_K8S_43=Images are pinned by an immutable release tag; set the component's image.digest to pin by digest as well"
{{- end }}
{{- if ne .root.Values.image.pullPolicy "Always" }}
{{- $n = add1 $n }}
checkov.io/skip{{ $n }}: "CKV_K8S_15=Release tags are immutable so IfNotPresent cannot run a stale image; image.pullPolicy can be set to Always"
{{- end }}
{{- if .secrets }}
{{- $n = add1 $n }}
checkov.io/skip{{ $n }}: "CKV_K8S_35=tickcast settings are read from TICKCAST_* environment variables by design (pydantic-settings SecretStr fields, never logged)"
{{- end }}
{{- range .extra }}
{{- $n = add1 $n }}
checkov.io/skip{{ $n }}: {{ . | quote }}
{{- end }}
{{- end }}

{{/* Pod annotations that roll pods when the configuration changes. */}}
{{- define "tickcast.checksumAnnotations" -}}
checksum/config: {{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
{{- if not .Values.secrets.existingSecret }}
checksum/secret: {{ include (print .Template.BasePath "/secret.yaml") . | sha256sum }}
{{- end }}
{{- end }}

{{/* Prometheus scrape annotations. Args: dict "root" $ "port" PORT. */}}
{{- define "tickcast.prometheusAnnotations" -}}
{{- if .root.Values.prometheusAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .port | int | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- end }}

{{/*
Secret settings a container needs, as env entries from the chart's Secret or existingSecret.
Each is optional (a key that is not set leaves the setting unset) except the forecast API's
token while servingAuth.required is true: a pod whose Secret lacks it does not start, rather
than serve or call an API without authentication.
Args: dict "root" $ "names" (list of TICKCAST_* names).
*/}}
{{- define "tickcast.secretEnv" -}}
{{- $secret := include "tickcast.secretName" .root }}
{{- $tokenKey := include "tickcast.servingTokenKey" .root }}
{{- $auth := .root.Values.servingAuth }}
{{- range .names }}
- name: {{ . }}
  valueFrom:
    secretKeyRef:
      name: {{ ternary ($auth.secretName | default $secret) $secret (eq . $tokenKey) }}
      key: {{ . }}
      optional: {{ not (and $auth.required (eq . $tokenKey)) }}
{{- end }}
{{- end }}

{{/* The Secret key (and setting) of the forecast API's bearer token. */}}
{{- define "tickcast.servingTokenKey" -}}
TICKCAST_SERVING__AUTH_TOKEN
{{- end }}

{{/* Where the Kafka CA bundle is mounted. */}}
{{- define "tickcast.kafkaCaPath" -}}
{{- printf "/etc/tickcast/kafka-ca/%s" .Values.kafkaTls.caKey }}
{{- end }}

{{/*
Volumes of a tickcast (non-Ray) pod. Args: dict "root" $ "kafka" (bool: mount the Kafka CA).
*/}}
{{- define "tickcast.volumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .root.Values.tmpSizeLimit }}
{{- if and .kafka .root.Values.kafkaTls.caConfigMap }}
- name: kafka-ca
  configMap:
    name: {{ .root.Values.kafkaTls.caConfigMap }}
    items:
      - key: {{ .root.Values.kafkaTls.caKey }}
        path: {{ .root.Values.kafkaTls.caKey }}
{{- end }}
{{- end }}

{{- define "tickcast.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if and .kafka .root.Values.kafkaTls.caConfigMap }}
- name: kafka-ca
  mountPath: /etc/tickcast/kafka-ca
  readOnly: true
{{- end }}
{{- end }}

{{/*
The pod spec of a long-running tickcast service (producer, consumer, forecaster, dashboard).
Args: dict "root" $ "component" NAME "values" (the component's values) "command" (CLI
sub-command) "port" PORT "portName" NAME "probePath" PATH "secrets" (list) "kafka" (bool).
*/}}
{{- define "tickcast.servicePodSpec" -}}
{{- $root := .root }}
{{- $v := .values }}
serviceAccountName: {{ include "tickcast.serviceAccountName" (dict "root" $root "section" .component) }}
automountServiceAccountToken: false
enableServiceLinks: false
terminationGracePeriodSeconds: {{ $v.terminationGracePeriodSeconds }}
securityContext:
  {{- toYaml $root.Values.podSecurityContext | nindent 2 }}
{{- with $root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
containers:
  - name: {{ .component }}
    image: {{ include "tickcast.image" (dict "root" $root "image" $v.image) }}
    imagePullPolicy: {{ $root.Values.image.pullPolicy }}
    command: ["tickcast"]
    args:
      - {{ .command }}
      {{- range $v.extraArgs }}
      - {{ . | quote }}
      {{- end }}
    ports:
      - name: {{ .portName }}
        containerPort: {{ .port }}
        protocol: TCP
    envFrom:
      - configMapRef:
          name: {{ include "tickcast.configMapName" $root }}
    {{- if or .secrets $v.extraEnv }}
    env:
      {{- include "tickcast.secretEnv" (dict "root" $root "names" .secrets) | trim | nindent 6 }}
      {{- with $v.extraEnv }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
    {{- end }}
    startupProbe:
      httpGet:
        path: {{ .probePath }}
        port: {{ .portName }}
      periodSeconds: 5
      timeoutSeconds: 3
      failureThreshold: 36
    readinessProbe:
      httpGet:
        path: {{ .probePath }}
        port: {{ .portName }}
      periodSeconds: 10
      timeoutSeconds: 3
      failureThreshold: 3
    livenessProbe:
      httpGet:
        path: {{ .probePath }}
        port: {{ .portName }}
      periodSeconds: 20
      timeoutSeconds: 5
      failureThreshold: 3
    resources:
      {{- toYaml $v.resources | nindent 6 }}
    securityContext:
      {{- toYaml $root.Values.containerSecurityContext | nindent 6 }}
    volumeMounts:
      {{- include "tickcast.volumeMounts" (dict "root" $root "kafka" .kafka) | trim | nindent 6 }}
volumes:
  {{- include "tickcast.volumes" (dict "root" $root "kafka" .kafka) | trim | nindent 2 }}
{{- with $v.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/*
Environment of every Ray container (Serve and the batch jobs): no usage stats phone-home,
caches on the /tmp emptyDir (the root filesystem is read-only).
*/}}
{{- define "tickcast.rayEnv" -}}
- name: RAY_USAGE_STATS_ENABLED
  value: "0"
- name: HOME
  value: /tmp
- name: HF_HOME
  value: /tmp/huggingface
- name: XDG_CACHE_HOME
  value: /tmp/.cache
- name: MPLCONFIGDIR
  value: /tmp/matplotlib
- name: TRITON_CACHE_DIR
  value: /tmp/triton
{{- end }}

{{/* Volumes of a Ray pod: /tmp (session dir, logs, spilling) and a memory-backed /dev/shm (object store). */}}
{{- define "tickcast.rayVolumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .tmp }}
- name: dshm
  emptyDir:
    medium: Memory
    sizeLimit: {{ .shm }}
{{- end }}

{{- define "tickcast.rayVolumeMounts" -}}
- name: tmp
  mountPath: /tmp
- name: dshm
  mountPath: /dev/shm
{{- end }}

{{/* The NetworkPolicy peer of the KubeRay operator: its pods (namespace AND pod labels), not its whole namespace. */}}
{{- define "tickcast.kuberayOperatorPeer" -}}
{{- $np := .Values.networkPolicy }}
- namespaceSelector:
    matchLabels:
      kubernetes.io/metadata.name: {{ $np.kuberayOperatorNamespace }}
  podSelector:
    matchLabels:
      {{- toYaml $np.kuberayOperatorPodLabels | nindent 6 }}
{{- end }}
