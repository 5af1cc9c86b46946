{{- define "rexec.fullname" -}}
{{- printf "%s-rexec" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "rexec.labels" -}}
app.kubernetes.io/name: rexec
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "rexec.selector" -}}
app.kubernetes.io/name: rexec
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "rexec.workerNamespace" -}}
{{- default .Release.Namespace .Values.worker.namespace -}}
{{- end -}}

{{- define "rexec.secretName" -}}
{{- default (printf "%s-secrets" (include "rexec.fullname" .)) .Values.secrets.existingSecret -}}
{{- end -}}

{{- define "rexec.image" -}}
{{ printf "%s:%s" .Values.image.repository .Values.image.tag }}
{{- end -}}

{{/* Pod and container hardening shared by broker and spawner. */}}
{{- define "rexec.podSecurity" -}}
runAsNonRoot: true
runAsUser: {{ .Values.worker.uid }}
runAsGroup: {{ .Values.worker.uid }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "rexec.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end -}}

{{- define "rexec.authEnv" -}}
- name: REXEC_AUTHENTICATOR
  value: {{ .Values.auth.authenticator | quote }}
- name: REXEC_AUTH_API_URL
  value: {{ .Values.auth.authApiUrl | quote }}
- name: REXEC_ALLOWED_GROUPS
  value: {{ join "," .Values.auth.allowedGroups | quote }}
- name: REXEC_AUTH_CACHE_TTL_S
  value: {{ .Values.auth.cacheTtlSeconds | quote }}
- name: REXEC_WORKER_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "rexec.secretName" . }}
      key: worker-key
- name: REXEC_ADMIN_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ include "rexec.secretName" . }}
      key: admin-secret
- name: HOME
  value: /tmp
{{- end -}}
