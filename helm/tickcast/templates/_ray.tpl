{{/*
Pod templates of Ray nodes (RayService head and workers, the fine-tune RayJob's cluster).
KubeRay runs `ray start` in the first container and injects Ray-aware liveness and readiness
probes (raylet, GCS and Serve proxy health) when none are given, so none are set here.
*/}}

{{/*
Args: dict "root" $ "component" NAME "container" NAME "resources" MAP "gpus" N
"nodeSelector" MAP "tolerations" LIST "affinity" MAP "autoscalerToken" BOOL
"head" BOOL "podAnnotations" MAP "secrets" LIST "section" (values section whose ServiceAccount
the pods run as: rayService or jobs)

No container gets the ServiceAccount's API token automatically (automountServiceAccountToken
false). With "autoscalerToken" the pod gets a projected token volume that only the KubeRay
autoscaler sidecar mounts (rayService.yaml's autoscalerOptions.volumeMounts): the Ray
container, which runs Serve replicas and any code submitted to Ray, holds no Kubernetes
credentials.
*/}}
{{- define "tickcast.rayPodTemplate" -}}
{{- $root := .root }}
{{- $r := $root.Values.rayService }}
{{- $resources := deepCopy .resources }}
{{- if gt (int .gpus) 0 }}
{{- $limits := get $resources "limits" | default dict }}
{{- $_ := set $limits "nvidia.com/gpu" (int .gpus) }}
{{- $_ := set $resources "limits" $limits }}
{{- end }}
{{- $skips := list "CKV_K8S_8=KubeRay injects Ray-aware liveness probes (raylet and GCS health) into Ray containers" "CKV_K8S_9=KubeRay injects Ray-aware readiness probes (raylet and Serve proxy health) into Ray containers" }}
metadata:
  labels:
    {{- include "tickcast.componentSelectorLabels" (dict "root" $root "component" .component) | trim | nindent 4 }}
  annotations:
    {{- include "tickcast.checksumAnnotations" $root | trim | nindent 4 }}
    {{- include "tickcast.prometheusAnnotations" (dict "root" $root "port" 8080) | trim | nindent 4 }}
    {{- include "tickcast.checkovSkips" (dict "root" $root "image" $r.image "secrets" true "extra" $skips) | trim | nindent 4 }}
    {{- with .podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "tickcast.serviceAccountName" (dict "root" $root "section" .section) }}
  automountServiceAccountToken: false
  enableServiceLinks: false
  securityContext:
    {{- toYaml $r.podSecurityContext | nindent 4 }}
  {{- with $root.Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  containers:
    - name: {{ .container }}
      image: {{ include "tickcast.image" (dict "root" $root "image" $r.image) }}
      imagePullPolicy: {{ $root.Values.image.pullPolicy }}
      ports:
        {{- if .head }}
        - name: gcs-server
          containerPort: 6379
          protocol: TCP
        - name: dashboard
          containerPort: 8265
          protocol: TCP
        - name: client
          containerPort: 10001
          protocol: TCP
        {{- end }}
        - name: serve
          containerPort: {{ $root.Values.config.serving.port }}
          protocol: TCP
        - name: metrics
          containerPort: 8080
          protocol: TCP
      envFrom:
        - configMapRef:
            name: {{ include "tickcast.configMapName" $root }}
      env:
        {{- include "tickcast.rayEnv" $root | trim | nindent 8 }}
        {{- include "tickcast.secretEnv" (dict "root" $root "names" .secrets) | trim | nindent 8 }}
        {{- with $r.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      resources:
        {{- toYaml $resources | nindent 8 }}
      securityContext:
        {{- toYaml $root.Values.containerSecurityContext | nindent 8 }}
      volumeMounts:
        {{- include "tickcast.rayVolumeMounts" . | trim | nindent 8 }}
  volumes:
    {{- include "tickcast.rayVolumes" (dict "tmp" $r.tmpSizeLimit "shm" $r.shmSizeLimit) | trim | nindent 4 }}
    {{- if .autoscalerToken }}
    {{- include "tickcast.autoscalerTokenVolume" . | trim | nindent 4 }}
    {{- end }}
  {{- with .nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}

{{/* The projected ServiceAccount token of the Ray autoscaler: what automounting would give,
mounted by the autoscaler sidecar alone. */}}
{{- define "tickcast.autoscalerTokenVolumeName" -}}
autoscaler-kube-api
{{- end }}

{{- define "tickcast.autoscalerTokenVolume" -}}
- name: {{ include "tickcast.autoscalerTokenVolumeName" . }}
  projected:
    defaultMode: 0444
    sources:
      - serviceAccountToken:
          path: token
          expirationSeconds: 3607
      - configMap:
          name: kube-root-ca.crt
          items:
            - key: ca.crt
              path: ca.crt
      - downwardAPI:
          items:
            - path: namespace
              fieldRef:
                apiVersion: v1
                fieldPath: metadata.namespace
{{- end }}

{{/*
Ray token authentication (KubeRay authOptions, Ray 2.52+): the dashboard, the job API, GCS and
every Ray RPC require the token. KubeRay sets RAY_AUTH_MODE and RAY_AUTH_TOKEN in the Ray
containers, the autoscaler and the job submitter, and uses the token itself for Serve's config.
*/}}
{{- define "tickcast.rayAuthOptions" -}}
{{- $a := .Values.rayService.auth }}
{{- if $a.enabled }}
authOptions:
  mode: token
  {{- with $a.secretName }}
  secretName: {{ . }}
  {{- end }}
{{- end }}
{{- end }}
