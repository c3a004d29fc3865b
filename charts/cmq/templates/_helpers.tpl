{{- define "cmq.fullname" -}}
{{- printf "%s-operator" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "cmq.labels" -}}
app.kubernetes.io/name: cmq-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "cmq.selector" -}}
app.kubernetes.io/name: cmq-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "cmq.serviceAccount" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "cmq.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}
