{{/* Name of the chart's objects: <release>-ferry, or the release name when it already says ferry. */}}
{{- define "ferry.fullname" -}}
{{- if contains "ferry" .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-ferry" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "ferry.selectorLabels" -}}
app.kubernetes.io/name: ferry
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: ferryd
{{- end -}}

{{- define "ferry.labels" -}}
{{ include "ferry.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "ferry.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "ferry.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
ferry.secretName: the Secret of one item of TLS or key material: the
existing one named in the values, else the one the chart makes
(<fullname>-<suffix>). Call with (list $ "valuesKey" "suffix").
*/}}
{{- define "ferry.secretName" -}}
{{- $root := index . 0 -}}
{{- $v := index $root.Values (index . 1) -}}
{{- default (printf "%s-%s" (include "ferry.fullname" $root) (index . 2)) $v.existingSecret -}}
{{- end -}}

{{/* ferry.redisSecretName: the Secret holding the Redis URL. */}}
{{- define "ferry.redisSecretName" -}}
{{- default (printf "%s-redis" (include "ferry.fullname" .)) .Values.redis.existingSecret -}}
{{- end -}}

{{/* ferry.check fails the render on values ferryd cannot start with. */}}
{{- define "ferry.check" -}}
{{- if not (or .Values.redis.url .Values.redis.existingSecret) -}}
{{- fail "redis.url or redis.existingSecret is required: replicas share their store through Redis" -}}
{{- end -}}
{{- with .Values.redis.url -}}
{{- if not (regexMatch "^(redis|rediss)(\\+cluster|\\+sentinel)?://|^unix://" .) -}}
{{- fail (printf "redis.url must start with redis://, redis+cluster://, redis+sentinel:// (or rediss…, unix://); got scheme %q" (regexFind "^[^:]*" .)) -}}
{{- end -}}
{{- end -}}
{{- if not .Values.downloadURL -}}
{{- fail "downloadURL is required: the base URL of target downloads as devices reach the API port, e.g. https://ferry.example.com:8443/tuf/targets" -}}
{{- end -}}
{{- range $item := list (list "tls" "cert" "key") (list "deviceCA" "cert") (list "operatorKeys" "json") (list "onlineKeys" "snapshot" "timestamp") -}}
{{- $name := index $item 0 -}}
{{- $v := index $.Values $name -}}
{{- if not $v.existingSecret -}}
{{- range $k := rest $item -}}
{{- if not (index $v $k) -}}
{{- fail (printf "%s.existingSecret or %s.%s is required" $name $name $k) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- range $name := list "deviceIssuer" -}}
{{- $v := index $.Values $name -}}
{{- if and (not $v.existingSecret) (ne (not $v.cert) (not $v.key)) -}}
{{- fail (printf "%s.cert and %s.key go together" $name $name) -}}
{{- end -}}
{{- end -}}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.repository.url) (not .Values.repository.persistence.existingClaim) (not (has "ReadWriteMany" .Values.repository.persistence.accessModes)) -}}
{{- fail "with replicaCount > 1 the repository directory must be shared: repository.url (s3://…), or a ReadWriteMany volume (repository.persistence.accessModes)" -}}
{{- end -}}
{{- end -}}
