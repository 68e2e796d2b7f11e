{{/*
Checks across values that values.schema.json cannot express, each failing with what to change.
Included once, from configmap.yaml.
*/}}
{{- define "tickcast.validate" -}}
{{- $accounts := dict }}
{{- range $section, $_ := include "tickcast.serviceAccountWorkloads" . | fromYaml }}
{{- $sa := (index $.Values $section).serviceAccount }}
{{- if and $sa.create (include "tickcast.sectionEnabled" (dict "root" $ "section" $section)) }}
{{- $name := include "tickcast.serviceAccountName" (dict "root" $ "section" $section) }}
{{- if hasKey $accounts $name }}
{{- fail (printf "%s.serviceAccount and %s.serviceAccount both create the ServiceAccount %q: give them different names, or set create to false on one and share it" (get $accounts $name) $section $name) }}
{{- end }}
{{- $_ := set $accounts $name $section }}
{{- end }}
{{- end }}
{{- $k := .Values.config.kafka }}
{{- if and (eq ($k.sasl_mechanism | toString) "OAUTHBEARER") (ne $k.security_protocol "SASL_SSL") }}
{{- fail (printf "config.kafka.sasl_mechanism OAUTHBEARER (Amazon MSK IAM) needs config.kafka.security_protocol SASL_SSL, not %s: MSK's IAM listener (port 9098) is TLS only" $k.security_protocol) }}
{{- end }}
{{- $c := .Values.consumer.autoscaling }}
{{- if and .Values.consumer.enabled $c.enabled (gt (int $c.minReplicas) (int $c.maxReplicas)) }}
{{- fail (printf "consumer.autoscaling.minReplicas (%d) is above consumer.autoscaling.maxReplicas (%d): lower minReplicas or raise maxReplicas" (int $c.minReplicas) (int $c.maxReplicas)) }}
{{- end }}
{{- $wg := .Values.rayService.workerGroup }}
{{- if .Values.rayService.enabled }}
{{- if gt (int $wg.minReplicas) (int $wg.maxReplicas) }}
{{- fail (printf "rayService.workerGroup.minReplicas (%d) is above rayService.workerGroup.maxReplicas (%d)" (int $wg.minReplicas) (int $wg.maxReplicas)) }}
{{- end }}
{{- if or (lt (int $wg.replicas) (int $wg.minReplicas)) (gt (int $wg.replicas) (int $wg.maxReplicas)) }}
{{- fail (printf "rayService.workerGroup.replicas (%d) must lie within minReplicas (%d) and maxReplicas (%d)" (int $wg.replicas) (int $wg.minReplicas) (int $wg.maxReplicas)) }}
{{- end }}
{{- if and (eq (int $wg.gpus) 0) (gt (float64 .Values.config.serving.num_gpus) 0.0) }}
{{- fail (printf "config.serving.num_gpus is %v but rayService.workerGroup.gpus is 0, so no Serve replica could ever be placed: set config.serving.num_gpus to 0 for a CPU worker group, or give the workers GPUs" .Values.config.serving.num_gpus) }}
{{- end }}
{{- end }}
{{- if and .Values.rayService.enabled (not (has .Values.rayService.serve.proxyLocation (list "EveryNode" "HeadOnly"))) (or .Values.forecaster.enabled .Values.dashboard.enabled) }}
{{- fail "rayService.serve.proxyLocation is Disabled but the forecaster or dashboard call Serve over HTTP: use EveryNode or HeadOnly" }}
{{- end }}
{{- $ing := .Values.dashboard.ingress }}
{{- if and .Values.dashboard.enabled $ing.enabled }}
{{- if not $ing.certificateArn }}
{{- fail "dashboard.ingress.enabled exposes the dashboard, which then needs HTTPS: set dashboard.ingress.certificateArn to an ACM certificate of dashboard.ingress.host" }}
{{- end }}
{{- $o := $ing.oidc }}
{{- range $field := list "issuer" "authorizationEndpoint" "tokenEndpoint" "userInfoEndpoint" "secretName" }}
{{- if not (index $o $field) }}
{{- fail (printf "dashboard.ingress.enabled exposes the dashboard, which then needs OIDC sign-in at the load balancer: set dashboard.ingress.oidc.%s (see helm/README.md, \"Exposing the dashboard\")" $field) }}
{{- end }}
{{- end }}
{{- if and (eq $ing.scheme "internet-facing") (not $ing.inboundCidrs) }}
{{- fail "dashboard.ingress.scheme internet-facing needs dashboard.ingress.inboundCidrs: name the CIDRs that may reach the dashboard (there is no 0.0.0.0/0 default)" }}
{{- end }}
{{- range $key, $_ := $ing.annotations }}
{{- if or (hasPrefix "alb.ingress.kubernetes.io/auth-" $key) (has $key (list "alb.ingress.kubernetes.io/inbound-cidrs" "alb.ingress.kubernetes.io/listen-ports" "alb.ingress.kubernetes.io/certificate-arn" "alb.ingress.kubernetes.io/ssl-redirect" "alb.ingress.kubernetes.io/scheme")) }}
{{- fail (printf "dashboard.ingress.annotations sets %s, which the chart owns (TLS, OIDC sign-in, inbound CIDRs): use dashboard.ingress.certificateArn, oidc, inboundCidrs and scheme instead" $key) }}
{{- end }}
{{- end }}
{{- end }}
{{- if and (or .Values.forecaster.enabled .Values.dashboard.enabled) (not .Values.rayService.enabled) (not .Values.config.serving.url) }}
{{- fail "rayService.enabled is false, so the forecaster and dashboard need config.serving.url pointing at a Serve endpoint elsewhere" }}
{{- end }}
{{- end }}
