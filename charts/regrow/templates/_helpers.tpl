{{- define "regrow.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "regrow.selectorLabels" -}}
app.kubernetes.io/name: regrow-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "regrow.labels" -}}
{{ include "regrow.selectorLabels" . }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: regrow
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "regrow.serviceAccountName" -}}
{{- default (include "regrow.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "regrow.image" -}}
{{- printf "%s:%s" .image.repository (default .chart.AppVersion .image.tag) -}}
{{- end -}}

{{/* The rules the reconcilers need, and nothing more: each is listed with its reason in the chart's README. */}}
{{- define "regrow.rules" -}}
- apiGroups: [regrow.dev]
  resources: [trainingjobs, modeldeployments, driftpolicies]
  verbs: [get, list, watch]
- apiGroups: [regrow.dev]
  resources: [trainingjobs]
  verbs: [create]
- apiGroups: [regrow.dev]
  resources: [trainingjobs/status, modeldeployments/status, driftpolicies/status]
  verbs: [patch]
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create]
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch]
- apiGroups: [""]
  resources: [services]
  verbs: [get, list, watch, create, patch]
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch]
- apiGroups: [autoscaling]
  resources: [horizontalpodautoscalers]
  verbs: [get, list, watch, create, patch]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, list, watch, create, patch]
- apiGroups: [""]
  resources: [secrets]
  verbs: [create]
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- end -}}
