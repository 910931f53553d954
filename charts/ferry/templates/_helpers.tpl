{{/*
Names. Every object is `<fullname>-<part>`; the fullname is cut at 45 characters so that the
longest part (`-sidecar-secrets`, 16) still leaves a name that fits a Service (63).
With the release named `ferry` the fullname is `ferry`, and the names are those of deploy/rbac/.
*/}}
{{- define "ferry.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 45 | trimSuffix "-" -}}
{{- end -}}

{{- define "ferry.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 45 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 45 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 45 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "ferry.operator.name" -}}{{ include "ferry.fullname" . }}-operator{{- end -}}
{{/* The Service in front of the operator's CA. */}}
{{- define "ferry.ca.name" -}}{{ include "ferry.fullname" . }}-ca{{- end -}}
{{/* Where sidecars reach the CA. */}}
{{- define "ferry.ca.address" -}}
{{- if .Values.mtls.sentryAddress -}}{{ .Values.mtls.sentryAddress }}{{- else -}}{{ include "ferry.ca.name" . }}.{{ .Release.Namespace }}.svc:443{{- end -}}
{{- end -}}
{{- define "ferry.injector.name" -}}{{ include "ferry.fullname" . }}-injector{{- end -}}
{{/* The webhook configuration: the injector keeps its caBundle (--webhook-config-name). */}}
{{- define "ferry.webhook.name" -}}{{ include "ferry.fullname" . }}-injector{{- end -}}
{{/* Bootstrap mode's Secret (--tls-secret-name); also the Secret cert-manager writes. */}}
{{- define "ferry.injector.tlsSecret" -}}{{ include "ferry.fullname" . }}-injector-tls{{- end -}}
{{/* The sidecars' ClusterRole and the ClusterRoleBinding to it that the operator keeps. */}}
{{- define "ferry.sidecar.name" -}}{{ include "ferry.fullname" . }}-sidecar{{- end -}}
{{/* The Role and RoleBinding the operator keeps in each namespace (--sidecar-secrets-role). */}}
{{- define "ferry.sidecar.secretsRole" -}}{{ include "ferry.fullname" . }}-sidecar-secrets{{- end -}}
{{/* The operator's leader-election Lease (--lease-name). */}}
{{- define "ferry.operator.lease" -}}{{ include "ferry.fullname" . }}-operator{{- end -}}

{{/* Labels: the standard app.kubernetes.io set. */}}
{{- define "ferry.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "ferry.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: ferry
{{- end -}}

{{- define "ferry.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ferry.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels and selector of one component: (dict "ctx" $ "component" "operator"). */}}
{{- define "ferry.componentLabels" -}}
{{ include "ferry.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "ferry.componentSelector" -}}
{{ include "ferry.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/*
An image reference: (dict "ctx" $ "image" .Values.operator.image). Empty fields of the
component's image fall back to .Values.image, the tag to the chart's appVersion.
*/}}
{{- define "ferry.image" -}}
{{- $registry := .image.registry | default .ctx.Values.image.registry -}}
{{- $tag := .image.tag | default .ctx.Values.image.tag | default .ctx.Chart.AppVersion -}}
{{- if $registry -}}
{{- printf "%s/%s:%s" $registry .image.repository $tag -}}
{{- else -}}
{{- printf "%s:%s" .image.repository $tag -}}
{{- end -}}
{{- end -}}

{{- define "ferry.pullPolicy" -}}
{{- .image.pullPolicy | default .ctx.Values.image.pullPolicy -}}
{{- end -}}

{{/* Whether the injector keeps the caBundle itself, and so needs RBAC on the webhook configuration. */}}
{{- define "ferry.injector.managesCaBundle" -}}
{{- $tls := .Values.webhook.tls -}}
{{- if or (eq $tls.mode "bootstrap") (and (eq $tls.mode "secret") (not $tls.secret.caBundle)) -}}
true
{{- end -}}
{{- end -}}

{{/* The name of the Secret the injector serves from (files modes). */}}
{{- define "ferry.injector.servingSecret" -}}
{{- if eq .Values.webhook.tls.mode "secret" -}}
{{- .Values.webhook.tls.secret.name -}}
{{- else -}}
{{- include "ferry.injector.tlsSecret" . -}}
{{- end -}}
{{- end -}}

{{/*
Checks across values that the schema cannot express; each failure names the value and the fix.
*/}}
{{- define "ferry.validate" -}}
{{- $tls := .Values.webhook.tls -}}
{{- if and (eq $tls.mode "secret") (not $tls.secret.name) -}}
{{- fail "webhook.tls.secret.name: required when webhook.tls.mode is \"secret\" (a kubernetes.io/tls Secret in the release namespace)" -}}
{{- end -}}
{{- if and .Values.injector.pdb.enabled (ge (int .Values.injector.pdb.minAvailable) (int .Values.injector.replicas)) (gt (int .Values.injector.replicas) 0) -}}
{{- fail (printf "injector.pdb.minAvailable (%v) must be below injector.replicas (%v), or no node could ever be drained" .Values.injector.pdb.minAvailable .Values.injector.replicas) -}}
{{- end -}}
{{- end -}}

{{/* Default pod anti-affinity: prefer one replica per node. */}}
{{- define "ferry.affinity" -}}
{{- if .affinity -}}
{{- toYaml .affinity -}}
{{- else -}}
podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "ferry.componentSelector" (dict "ctx" .ctx "component" .component) | nindent 12 }}
{{- end -}}
{{- end -}}
