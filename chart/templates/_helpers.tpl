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
{{ printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end -}}

{{/* The broker's and spawner's image: the worker image holds no server packages. */}}
{{- define "rexec.serverImage" -}}
{{ printf "%s:%s" .Values.serverImage.repository (.Values.serverImage.tag | default .Chart.AppVersion) }}
{{- end -}}

{{/* imagePullSecrets as LocalObjectReferences (values may be names or {name: ...}). */}}
{{- define "rexec.pullSecrets" -}}
{{- $out := list }}
{{- range .Values.imagePullSecrets }}
{{- if kindIs "string" . }}{{ $out = append $out (dict "name" .) }}{{ else }}{{ $out = append $out . }}{{ end }}
{{- end }}
{{- toJson $out -}}
{{- end -}}

{{/* Pod-level scheduling and pull secrets for broker / spawner: call with (list $ .Values.x). */}}
{{- define "rexec.podExtras" -}}
{{- $root := index . 0 }}{{- $c := index . 1 }}
{{- $pull := include "rexec.pullSecrets" $root | fromJsonArray }}
{{- with $pull }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $c.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $c.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $c.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Broker's in-cluster Service name, for workers and the spawner. */}}
{{- define "rexec.brokerInternalHost" -}}
{{- printf "%s-broker-internal.%s.svc" (include "rexec.fullname" .) .Release.Namespace -}}
{{- end -}}

{{/*
The worker NetworkPolicy's spec (JSON): the chart's own policy and, with perUserNamespaces,
the one the spawner creates in each user namespace (REXEC_K8S_NETWORK_POLICY), from one place.
Egress after zero-to-jupyterhub's egressAllowRules.
*/}}
{{- define "rexec.workerPolicySpec" -}}
{{- $np := .Values.networkPolicy }}
{{- $rules := $np.egressAllowRules }}
{{- $private := list "10.0.0.0/8" "172.16.0.0/12" "192.168.0.0/16" }}
{{- $egress := list }}
{{- $broker := dict "namespaceSelector" (dict "matchLabels" (dict "kubernetes.io/metadata.name" .Release.Namespace)) "podSelector" (dict "matchLabels" (dict "app.kubernetes.io/name" "rexec" "app.kubernetes.io/instance" .Release.Name "app.kubernetes.io/component" "broker")) }}
{{- $egress = append $egress (dict "to" (list $broker) "ports" (list (dict "protocol" "TCP" "port" (int .Values.broker.ports.workers)))) }}
{{- $dnsPorts := list (dict "protocol" "UDP" "port" 53) (dict "protocol" "TCP" "port" 53) }}
{{- $kubeDns := dict "namespaceSelector" (dict) "podSelector" (dict "matchLabels" (dict "k8s-app" "kube-dns")) }}
{{- $egress = append $egress (dict "to" (list $kubeDns) "ports" $dnsPorts) }}
{{- if $rules.dnsPortsPrivateIPs }}
{{- $to := list }}
{{- range $private }}{{ $to = append $to (dict "ipBlock" (dict "cidr" .)) }}{{ end }}
{{- $egress = append $egress (dict "to" $to "ports" $dnsPorts) }}
{{- end }}
{{- if $rules.nonPrivateIPs }}
{{- $except := concat $private (list "169.254.0.0/16" "100.64.0.0/10") }}
{{- $to := list (dict "ipBlock" (dict "cidr" "0.0.0.0/0" "except" $except)) (dict "ipBlock" (dict "cidr" "::/0" "except" (list "fc00::/7" "fe80::/10"))) }}
{{- $rule := dict "to" $to }}
{{- with $np.nonPrivateIPsPorts }}
{{- $ports := list }}
{{- range . }}{{ $ports = append $ports (dict "protocol" "TCP" "port" (int .)) }}{{ end }}
{{- $_ := set $rule "ports" $ports }}
{{- end }}
{{- $egress = append $egress $rule }}
{{- end }}
{{- if $rules.privateIPs }}
{{- $to := list }}
{{- range $private }}{{ $to = append $to (dict "ipBlock" (dict "cidr" .)) }}{{ end }}
{{- $egress = append $egress (dict "to" $to) }}
{{- end }}
{{- $egress = concat $egress $np.egress }}
{{- toJson (dict "podSelector" (dict "matchLabels" (dict "app.kubernetes.io/name" "rexec-worker")) "policyTypes" (list "Ingress" "Egress") "ingress" (list) "egress" $egress) -}}
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

{{/* Non-secret auth settings, as ConfigMap data. */}}
{{- define "rexec.authConfig" -}}
REXEC_AUTHENTICATOR: {{ .Values.auth.authenticator | quote }}
REXEC_AUTH_API_URL: {{ .Values.auth.authApiUrl | quote }}
REXEC_ALLOWED_GROUPS: {{ join "," .Values.auth.allowedGroups | quote }}
REXEC_AUTH_CACHE_TTL_S: {{ .Values.auth.cacheTtlSeconds | quote }}
{{- end -}}

{{/* The shared secrets, from the Secret (never literals). */}}
{{- define "rexec.secretEnv" -}}
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

{{/*
Pod annotations that roll a Deployment when what it reads changes: its ConfigMap, and the
names of the Secrets it reads (their generated values never change: helm.sh/resource-policy).
Call with (list $ "broker") or (list $ "spawner").
*/}}
{{- define "rexec.checksums" -}}
{{- $root := index . 0 }}{{- $which := index . 1 }}
checksum/config: {{ include (print $root.Template.BasePath "/" $which "-config.yaml") $root | sha256sum }}
checksum/secret: {{ toJson (list $root.Values.secrets $root.Values.broker.curve) | sha256sum }}
{{- end -}}
