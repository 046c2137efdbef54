{{/* The labels of every object the chart renders: the kustomize manifests' own plus Helm's. */}}
{{- define "xtrace.labels" -}}
app.kubernetes.io/name: {{ .name }}
app.kubernetes.io/part-of: xtrace
{{- with .root }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}
{{- end }}

{{- define "xtrace.tag" -}}
{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{- define "xtrace.operatorImage" -}}
{{ printf "%s/xtrace-operator:%s" (trimSuffix "/" .Values.image.registry) (include "xtrace.tag" .) }}
{{- end }}

{{- define "xtrace.agentImage" -}}
{{ printf "%s/xtrace-agent:%s" (trimSuffix "/" .Values.image.registry) (include "xtrace.tag" .) }}
{{- end }}
