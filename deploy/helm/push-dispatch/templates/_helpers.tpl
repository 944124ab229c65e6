{{/*
Helpers of the push-dispatch chart: names, standard labels, the service
accounts, the image, values derived from `config` (port, grace period) and
the checks that refuse inconsistent values.
*/}}

{{- define "push-dispatch.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "push-dispatch.fullname" -}}
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

{{- define "push-dispatch.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels shared by every object of the release (worker and provisioning Job). */}}
{{- define "push-dispatch.instanceLabels" -}}
app.kubernetes.io/name: {{ include "push-dispatch.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Selector of the worker pods (Deployment, PDB, PodMonitoring, Service). */}}
{{- define "push-dispatch.selectorLabels" -}}
{{ include "push-dispatch.instanceLabels" . }}
app.kubernetes.io/component: worker
{{- end }}

{{/* Standard labels without the component. */}}
{{- define "push-dispatch.commonLabels" -}}
helm.sh/chart: {{ include "push-dispatch.chart" . }}
{{ include "push-dispatch.instanceLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: push-dispatch
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Standard labels of the worker's objects. */}}
{{- define "push-dispatch.labels" -}}
{{ include "push-dispatch.commonLabels" . }}
app.kubernetes.io/component: worker
{{- end }}

{{- define "push-dispatch.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "push-dispatch.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The worker's Google service account (Workload Identity). */}}
{{- define "push-dispatch.gcpServiceAccount" -}}
{{- default (printf "push-dispatch@%s.iam.gserviceaccount.com" .Values.config.project_id) .Values.serviceAccount.workloadIdentity.gcpServiceAccount }}
{{- end }}

{{- define "push-dispatch.provisionServiceAccountName" -}}
{{- if .Values.provisionJob.serviceAccount.create }}
{{- default (printf "%s-provision" (include "push-dispatch.fullname" . | trunc 53 | trimSuffix "-")) .Values.provisionJob.serviceAccount.name }}
{{- else }}
{{- default (include "push-dispatch.serviceAccountName" .) .Values.provisionJob.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "push-dispatch.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The port of config.server.listen (host:port or [v6]:port). */}}
{{- define "push-dispatch.port" -}}
{{- $listen := toString .Values.config.server.listen }}
{{- $port := regexFind "[0-9]+$" $listen }}
{{- if or (not $port) (not (regexMatch ":[0-9]+$" $listen)) }}
{{- fail (printf "config.server.listen %q: expected HOST:PORT, e.g. 0.0.0.0:8080" $listen) }}
{{- end }}
{{- if hasPrefix "127." $listen }}
{{- fail (printf "config.server.listen %q listens on loopback only: probes and scrapes could not reach it; use 0.0.0.0:PORT" $listen) }}
{{- end }}
{{- $port }}
{{- end }}

{{/*
Whole seconds (rounded up) of a humantime duration such as "30s", "1m30s",
"2m", "1500ms", "1h". Fails on anything it cannot read.
*/}}
{{- define "push-dispatch.durationSeconds" -}}
{{- $d := toString . | trim }}
{{- $parts := regexFindAll "[0-9]+(\\.[0-9]+)?\\s*[a-zA-Zµ]+" $d -1 }}
{{- if or (not $parts) (ne (regexReplaceAll "[0-9]+(\\.[0-9]+)?\\s*[a-zA-Zµ]+|\\s" $d "") "") }}
{{- fail (printf "cannot read the duration %q; write it like 30s, 1m30s or 2m" $d) }}
{{- end }}
{{- $units := dict "ns" 0.000000001 "nsec" 0.000000001 "us" 0.000001 "µs" 0.000001 "usec" 0.000001 "ms" 0.001 "msec" 0.001 "s" 1.0 "sec" 1.0 "secs" 1.0 "second" 1.0 "seconds" 1.0 "m" 60.0 "min" 60.0 "mins" 60.0 "minute" 60.0 "minutes" 60.0 "h" 3600.0 "hr" 3600.0 "hrs" 3600.0 "hour" 3600.0 "hours" 3600.0 "d" 86400.0 "day" 86400.0 "days" 86400.0 }}
{{- $total := 0.0 }}
{{- range $parts }}
{{- $n := regexFind "^[0-9]+(\\.[0-9]+)?" . | float64 }}
{{- $u := regexFind "[a-zA-Zµ]+$" . }}
{{- if not (hasKey $units $u) }}
{{- fail (printf "cannot read the duration %q: unknown unit %q" $d $u) }}
{{- end }}
{{- $total = addf $total (mulf $n (get $units $u)) }}
{{- end }}
{{- ceil $total | int }}
{{- end }}

{{/* terminationGracePeriodSeconds: always longer than config.shutdown_grace. */}}
{{- define "push-dispatch.terminationGracePeriodSeconds" -}}
{{- $grace := include "push-dispatch.durationSeconds" .Values.config.shutdown_grace | int }}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- add $grace (int .Values.terminationGraceExtraSeconds) }}
{{- else }}
{{- $override := int .Values.terminationGracePeriodSeconds }}
{{- if le $override $grace }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must exceed config.shutdown_grace (%ds), or the kubelet kills the worker mid-drain" $override $grace) }}
{{- end }}
{{- $override }}
{{- end }}
{{- end }}

{{/*
The `secrets` list of a SecretProviderClass from (list $ .Values.secrets.X.secretManager):
the project defaults to config.project_id, the version to latest.
*/}}
{{- define "push-dispatch.secretManagerObjects" -}}
{{- $root := index . 0 }}
{{- range (index . 1) }}
- resourceName: {{ printf "projects/%s/secrets/%s/versions/%s" (default $root.Values.config.project_id .project) .secret (toString (default "latest" .version)) | quote }}
  path: {{ .path | quote }}
{{- end }}
{{- end }}

{{- define "push-dispatch.csiDriver" -}}
{{- if eq .Values.secrets.secretManager.provider "gke" }}secrets-store-gke.csi.k8s.io{{ else }}secrets-store.csi.k8s.io{{ end }}
{{- end }}

{{/* Volumes shared by the worker and the provisioning Job. */}}
{{- define "push-dispatch.configVolume" -}}
- name: config
  configMap:
    name: {{ include "push-dispatch.fullname" . }}
    items:
      - key: config.yaml
        path: config.yaml
- name: tmp
  emptyDir:
    medium: Memory
    sizeLimit: 16Mi
{{- end }}

{{/* The worker's volume mounts: config, /tmp, the credential secrets (also used by the helm test pod). */}}
{{- define "push-dispatch.volumeMounts" -}}
- name: config
  mountPath: /etc/push-dispatch
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- if .Values.secrets.apns.enabled }}
- name: apns
  mountPath: {{ .Values.secrets.apns.mountPath }}
  readOnly: true
{{- end }}
{{- if .Values.secrets.fcm.enabled }}
- name: fcm
  mountPath: {{ .Values.secrets.fcm.mountPath }}
  readOnly: true
{{- end }}
{{- with .Values.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The worker's volumes, matching push-dispatch.volumeMounts. */}}
{{- define "push-dispatch.volumes" -}}
{{- $fullname := include "push-dispatch.fullname" . }}
{{- include "push-dispatch.configVolume" . }}
{{- range $set := list "apns" "fcm" }}
{{- $s := index $.Values.secrets $set }}
{{- if $s.enabled }}
- name: {{ $set }}
  {{- if eq $.Values.secrets.source "secretManager" }}
  csi:
    driver: {{ include "push-dispatch.csiDriver" $ }}
    readOnly: true
    volumeAttributes:
      secretProviderClass: {{ printf "%s-%s" $fullname $set }}
  {{- else }}
  secret:
    secretName: {{ $s.existingSecret }}
    defaultMode: 0440
  {{- end }}
{{- end }}
{{- end }}
{{- with .Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Refuse combinations that cannot work, with a message that says what to change. */}}
{{- define "push-dispatch.validate" -}}
{{- if and .Values.autoscaling.enabled .Values.keda.enabled }}
{{- fail "autoscaling.enabled and keda.enabled are both true: a KEDA ScaledObject creates its own HorizontalPodAutoscaler, and two autoscalers on one Deployment fight. Enable only one." }}
{{- end }}
{{- if and .Values.autoscaling.enabled (kindIs "invalid" .Values.autoscaling.targetCPUUtilizationPercentage) (not .Values.autoscaling.pubsubBacklog.enabled) }}
{{- fail "autoscaling.enabled with neither targetCPUUtilizationPercentage nor pubsubBacklog.enabled: give the HPA a metric" }}
{{- end }}
{{- if and .Values.keda.enabled (gt (int .Values.keda.minReplicaCount) (int .Values.keda.maxReplicaCount)) }}
{{- fail "keda.minReplicaCount exceeds keda.maxReplicaCount" }}
{{- end }}
{{- if not .Values.config.apps }}
{{- fail "config.apps is empty: configure at least one app (the first is the default)" }}
{{- end }}
{{- if and (eq .Values.secrets.source "secretManager") .Values.secrets.apns.enabled (not .Values.secrets.apns.secretManager) }}
{{- fail "secrets.source is secretManager but secrets.apns.secretManager lists no secret" }}
{{- end }}
{{- if and (eq .Values.secrets.source "secretManager") .Values.secrets.fcm.enabled (not .Values.secrets.fcm.secretManager) }}
{{- fail "secrets.source is secretManager but secrets.fcm.secretManager lists no secret" }}
{{- end }}
{{- if and .Values.secrets.apns.enabled .Values.secrets.fcm.enabled (eq (clean .Values.secrets.apns.mountPath) (clean .Values.secrets.fcm.mountPath)) }}
{{- fail "secrets.apns.mountPath and secrets.fcm.mountPath must differ" }}
{{- end }}
{{- $_ := include "push-dispatch.port" . }}
{{- $_ = include "push-dispatch.terminationGracePeriodSeconds" . }}
{{- end }}

{{/* The DNS resolvers the NetworkPolicy allows, for NOTES. */}}
{{- define "push-dispatch.dnsPeers" -}}
{{- $dns := .Values.networkPolicy.dns }}
{{- $peers := list }}
{{- if $dns.kubeDns }}{{ $peers = append $peers "kube-dns" }}{{ end }}
{{- with $dns.nodeLocalDNSCache }}{{ $peers = append $peers (printf "NodeLocal DNSCache %s" .) }}{{ end }}
{{- if $dns.cloudDns }}{{ $peers = append $peers "Cloud DNS for GKE 169.254.169.254" }}{{ end }}
{{- if $dns.extra }}{{ $peers = append $peers (printf "%d extra peers" (len $dns.extra)) }}{{ end }}
{{- join ", " $peers }}
{{- end }}

{{/*
The rule groups of files/push-dispatch.rules.yaml (the one source of the
alert rules, also deploy/alerts/push-dispatch.rules.yaml) as a YAML list,
with the file's scope markers replaced by this release's own selectors and
${RUNBOOK_BASE_URL} by .Values.runbookBaseUrl. (list $ WHICH): WHICH is
"all", "namespaced" (every group but Pub/Sub's) or "pubsub".
*/}}
{{- define "push-dispatch.ruleGroups" -}}
{{- $root := index . 0 }}
{{- $which := index . 1 }}
{{- $v := $root.Values }}
{{- $fullname := include "push-dispatch.fullname" $root }}
{{- $ns := $root.Release.Namespace }}
{{- $name := regexQuoteMeta $fullname }}
{{- /* A Deployment's pods are FULLNAME-<pod-template-hash>-<5 chars>, both from Kubernetes' safe alphabet (no vowels), so the Job's FULLNAME-provision-xxxxx and a release named FULLNAME-canary do not match. */}}
{{- $podChars := "bcdfghjklmnpqrstvwxz2456789" }}
{{- $text := $root.Files.Get "files/push-dispatch.rules.yaml" }}
{{- $text = $text | replace "job=~\".*push-dispatch.*\"" (printf "namespace=%q, job=%q" $ns $fullname) }}
{{- $text = $text | replace "pod=~\".*push-dispatch.*\"" (printf "namespace=%q, pod=~%q" $ns (printf "%s-[%s]+-[%s]{5}" $name $podChars $podChars)) }}
{{- $text = $text | replace "horizontalpodautoscaler=~\".*push-dispatch.*\"" (printf "namespace=%q, horizontalpodautoscaler=~%q" $ns (printf "%s|keda-hpa-%s" $name $name)) }}
{{- $text = $text | replace "subscription_id=~\"push-requests.*-dispatch\"" (printf "project_id=%q, subscription_id=%q" $v.config.project_id $v.config.pubsub.subscription) }}
{{- $text = $text | replace "subscription_id=~\"push-requests.*-dlq-inspect\"" (printf "project_id=%q, subscription_id=%q" $v.config.project_id $v.config.pubsub.dead_letter_subscription) }}
{{- $text = $text | replace "${RUNBOOK_BASE_URL}" $v.runbookBaseUrl }}
{{- if or (contains ".*push-dispatch.*" $text) (contains "push-requests.*-" $text) (contains "${RUNBOOK_BASE_URL}" $text) }}
{{- fail "files/push-dispatch.rules.yaml has a scope marker the chart does not replace; see the file's header" }}
{{- end }}
{{- $doc := fromYaml $text }}
{{- if hasKey $doc "Error" }}
{{- fail (printf "files/push-dispatch.rules.yaml: %s" $doc.Error) }}
{{- end }}
{{- $groups := list }}
{{- range $doc.groups }}
{{- $pubsub := eq .name "push-dispatch.pubsub" }}
{{- $keep := or (eq $which "all") (and (eq $which "pubsub") $pubsub) (and (eq $which "namespaced") (not $pubsub)) }}
{{- if and $pubsub (not $v.alerts.pubsub) }}{{ $keep = false }}{{ end }}
{{- if and (eq .name "push-dispatch.kubernetes") (not $v.alerts.kubeStateMetrics) }}{{ $keep = false }}{{ end }}
{{- if $keep }}
{{- $_ := set . "interval" (default $v.alerts.interval .interval) }}
{{- range .rules }}
{{- if and .alert $v.alerts.additionalLabels }}
{{- $_ := set . "labels" (merge (deepCopy (default dict .labels)) $v.alerts.additionalLabels) }}
{{- end }}
{{- end }}
{{- $groups = append $groups . }}
{{- end }}
{{- end }}
{{- toYaml $groups }}
{{- end }}

{{/* runbookBaseUrl is required wherever alerts or the dashboard link to the runbook. */}}
{{- define "push-dispatch.requireRunbookBaseUrl" -}}
{{- if not .Values.runbookBaseUrl }}
{{- fail "runbookBaseUrl is empty: alerts.* and grafanaDashboard link to the runbook as runbookBaseUrl + #anchor. Set it to where docs/operations.md of this version is served, e.g. https://github.com/YOUR-ORG/push-dispatch/blob/v0.1.0/docs/operations.md" }}
{{- end }}
{{- end }}

{{/* Cloud Monitoring's PromQL endpoint for KEDA's prometheus trigger. */}}
{{- define "push-dispatch.kedaPrometheusServer" -}}
{{- default (printf "https://monitoring.googleapis.com/v1/projects/%s/location/global/prometheus" .Values.config.project_id) .Values.keda.prometheus.serverAddress }}
{{- end }}

{{/* The backlog query of KEDA's prometheus trigger: one value for the dispatch subscription. */}}
{{- define "push-dispatch.kedaBacklogQuery" -}}
{{- if .Values.keda.prometheus.query }}
{{- .Values.keda.prometheus.query }}
{{- else }}
{{- $sel := printf "project_id=%q, subscription_id=%q" .Values.config.project_id .Values.config.pubsub.subscription }}
{{- if eq .Values.keda.mode "OldestUnackedMessageAge" }}
{{- printf "max(pubsub_googleapis_com:subscription_oldest_unacked_message_age{%s})" $sel }}
{{- else }}
{{- printf "sum(pubsub_googleapis_com:subscription_num_undelivered_messages{%s})" $sel }}
{{- end }}
{{- end }}
{{- end }}

{{/* What the HPA scales on, for NOTES. */}}
{{- define "push-dispatch.hpaMetrics" -}}
{{- $m := list }}
{{- if .Values.autoscaling.pubsubBacklog.enabled }}{{ $m = append $m "the subscription backlog (External metric)" }}{{ end }}
{{- if not (kindIs "invalid" .Values.autoscaling.targetCPUUtilizationPercentage) }}{{ $m = append $m "CPU" }}{{ end }}
{{- join " and " $m }}
{{- end }}

{{/* The most replicas the Deployment can have: the autoscaler's maximum, else replicaCount. */}}
{{- define "push-dispatch.maxReplicas" -}}
{{- if .Values.keda.enabled }}{{ .Values.keda.maxReplicaCount }}
{{- else if .Values.autoscaling.enabled }}{{ .Values.autoscaling.maxReplicas }}
{{- else }}{{ .Values.replicaCount }}{{ end }}
{{- end }}

{{/* New pods per rollout wave: maxSurge of the most replicas (a percentage rounds up, as Kubernetes does), at least 1. */}}
{{- define "push-dispatch.rolloutSurge" -}}
{{- $replicas := include "push-dispatch.maxReplicas" . | int }}
{{- $surge := (.Values.updateStrategy.rollingUpdate | default dict).maxSurge | default 1 | toString }}
{{- $n := 1 }}
{{- if hasSuffix "%" $surge }}
{{- $pct := trimSuffix "%" $surge | int }}
{{- $n = div (add (mul $replicas $pct) 99) 100 | int }}
{{- else }}
{{- $n = $surge | int }}
{{- end }}
{{- max $n 1 }}
{{- end }}

{{- define "push-dispatch.rolloutWaves" -}}
{{- $replicas := include "push-dispatch.maxReplicas" . | int }}
{{- $surge := include "push-dispatch.rolloutSurge" . | int }}
{{- div (add $replicas $surge -1) $surge }}
{{- end }}

{{/*
The `helm upgrade --timeout` a rollout needs, in seconds: per wave the
startup probe's whole budget, a readiness period, minReadySeconds and 30 s to
schedule and pull; plus a minute; never under 5 minutes (Helm's default).
*/}}
{{- define "push-dispatch.upgradeTimeoutSeconds" -}}
{{- $p := .Values.probes }}
{{- $wave := add (mul $p.startup.periodSeconds $p.startup.failureThreshold) $p.readiness.periodSeconds .Values.minReadySeconds 30 }}
{{- max 300 (add (mul (include "push-dispatch.rolloutWaves" . | int) $wave) 60) }}
{{- end }}

{{/* Non-empty when the pods may land on GKE Spot nodes (a toleration or nodeSelector for cloud.google.com/gke-spot). */}}
{{- define "push-dispatch.onSpot" -}}
{{- $spot := false }}
{{- range .Values.tolerations }}{{ if eq (toString .key) "cloud.google.com/gke-spot" }}{{ $spot = true }}{{ end }}{{ end }}
{{- if eq (toString (index .Values.nodeSelector "cloud.google.com/gke-spot")) "true" }}{{ $spot = true }}{{ end }}
{{- if $spot }}true{{ end }}
{{- end }}

{{/*
The container's env: the Redis URL (with its AUTH password) from the Secret
coordination.redisUrlSecret, then .Values.env. Empty when neither is set.
*/}}
{{- define "push-dispatch.env" -}}
{{- with .Values.coordination.redisUrlSecret }}{{ if .name }}
- name: PUSH_DISPATCH_COORDINATION__REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ .name }}
      key: {{ .key }}
{{- end }}{{ end }}
{{- with .Values.env }}
{{ toYaml . }}
{{- end }}
{{- end }}
