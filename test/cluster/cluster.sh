#!/usr/bin/env bash
# The local cluster: one real Kubernetes node on this host, built from source.
#
#   cluster.sh up                  start (or reuse) every component, install Berth
#   cluster.sh down                stop what up started, undo its host changes
#   cluster.sh status              one line per component
#   cluster.sh restart-containerd  stop containerd and start it again (e2e)
#   cluster.sh stop-kubelet        stop kubelet; pods keep running (e2e faults)
#   cluster.sh start-kubelet       start kubelet again (e2e faults)
#
# Everything up changes on the host is recorded under $STATE/host first, and
# down puts it back: processes (by PID), mounts, netns, links, routes,
# iptables, sysctls, cgroups and the host paths it created.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$here/../.." && pwd)
. "$here/versions.sh"
. "$here/lib.sh"

OUT=${OUT:-$ROOT/_output}
STATE=$OUT/cluster
PKI=$STATE/pki
PIDS=$STATE/pids
LOGS=$STATE/logs
HOSTSNAP=$STATE/host
KUBECONFIG_OUT=$OUT/kubeconfig

NODE_NAME=${NODE_NAME:-berth-node}
POD_CIDR=10.244.0.0/16
NODE_POD_SUBNET=10.244.0.0/24
# IPv6 pod addresses, for pods that opt into dual stack (the IPPool "pods6"
# of deploy/local, fd42:10:244::/120 on cni0). A ULA range: never routed off
# this machine, and not the host's own fd00::/64.
POD6_CIDR=fd42:10:244::/64
SERVICE_CIDR=10.96.0.0/16
CLUSTER_DNS=10.96.0.10
KUBERNETES_SVC=10.96.0.1
BRIDGE=cni0

K8S_BIN=$(cache_dir kubernetes "$K8S_VERSION")/bin
ETCD_BIN=$(cache_dir etcd "$ETCD_VERSION")/bin
CONTAINERD_BIN=$(cache_dir containerd "$CONTAINERD_VERSION")/bin
RUNC_BIN=$(cache_dir runc "$RUNC_VERSION")/bin
CNI_BIN=$(cache_dir cni-plugins "$CNI_PLUGINS_VERSION")/bin
KUBECTL="$K8S_BIN/kubectl --kubeconfig=$KUBECONFIG_OUT"
CTR="$CONTAINERD_BIN/ctr --address /run/containerd/containerd.sock"

# Host paths the node's components create. Those missing before the first
# `up` are removed by `down`.
HOST_PATHS=(/var/lib/kubelet /var/lib/containerd /run/containerd /var/run/nri
	/var/lib/cni /etc/cni /opt/cni /var/log/pods /var/log/containers /run/netns
	/logs /run/berth)
# Sysctls that kubelet, kube-proxy and the bridge plugin may change.
SYSCTLS=(net.ipv4.ip_forward net.ipv6.conf.all.forwarding vm.overcommit_memory
	vm.panic_on_oom kernel.panic kernel.panic_on_oops kernel.keys.root_maxkeys
	kernel.keys.root_maxbytes net.ipv4.conf.all.route_localnet
	net.bridge.bridge-nf-call-iptables net.bridge.bridge-nf-call-ip6tables)
COMPONENTS=(etcd containerd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy)

node_ip() {
	ip -4 -o addr show scope global | awk '$2 != "'$BRIDGE'" {split($4, a, "/"); print a[1]; exit}'
}

# --- processes ---------------------------------------------------------------

pid_of() { cat "$PIDS/$1.pid" 2>/dev/null || true; }

running() {
	local pid; pid=$(pid_of "$1")
	[ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && grep -qa "$1" "/proc/$pid/cmdline" 2>/dev/null
}

# start NAME BINARY ARGS...: runs BINARY in its own session, logging to
# $LOGS/NAME.log; its PID goes to $PIDS/NAME.pid.
start() {
	local name=$1; shift
	if running "$name"; then
		log "$name already running (pid $(pid_of "$name"))"
		return 0
	fi
	log "starting $name"
	# 9>&-: the daemon must not inherit (and so hold) the up/down lock.
	setsid nohup "$@" >>"$LOGS/$name.log" 2>&1 </dev/null 9>&- &
	echo $! >"$PIDS/$name.pid"
}

# stop NAME: SIGTERM, then SIGKILL after 20 s.
stop() {
	local name=$1 pid; pid=$(pid_of "$name")
	if [ -n "$pid" ] && running "$name"; then
		log "stopping $name (pid $pid)"
		kill -TERM "$pid" 2>/dev/null || true
		if ! wait_for 20 "$name to exit" bash -c "! kill -0 $pid"; then
			kill -KILL "$pid" 2>/dev/null || true
			wait_for 5 "$name to die" bash -c "! kill -0 $pid" || true
		fi
	fi
	rm -f "$PIDS/$name.pid"
}

# --- host snapshot -------------------------------------------------------------

snapshot_host() {
	[ -f "$HOSTSNAP/done" ] && return 0
	log "recording host state in $HOSTSNAP"
	mkdir -p "$HOSTSNAP"
	: >"$HOSTSNAP/created-paths"
	for p in "${HOST_PATHS[@]}"; do
		[ -e "$p" ] || echo "$p" >>"$HOSTSNAP/created-paths"
	done
	: >"$HOSTSNAP/sysctls"
	for s in "${SYSCTLS[@]}"; do
		v=$(sysctl -n "$s" 2>/dev/null) && echo "$s=$v" >>"$HOSTSNAP/sysctls"
	done
	iptables-save >"$HOSTSNAP/iptables"
	ip6tables-save >"$HOSTSNAP/ip6tables"
	ip -o link show | awk -F': ' '{sub(/@.*/, "", $2); print $2}' | sort >"$HOSTSNAP/links"
	ip netns list 2>/dev/null | awk '{print $1}' | sort >"$HOSTSNAP/netns"
	for h in /sys/fs/cgroup/*/; do
		[ -d "$h" ] && find "$h" -mindepth 1 -maxdepth 1 -type d
	done | sort >"$HOSTSNAP/cgroups"
	touch "$HOSTSNAP/done"
}

restore_host() {
	[ -f "$HOSTSNAP/done" ] || return 0
	# Mounts first: kubelet's volumes, containerd's snapshots and shm, netns binds.
	local prefixes=(/var/lib/kubelet /var/lib/containerd /run/containerd /run/netns/cni- /var/run/nri)
	for pass in 1 2 3; do
		local mounts
		mounts=$(findmnt -rn -o TARGET | grep -E "^($(IFS='|'; echo "${prefixes[*]}"))" | sort -r || true)
		[ -z "$mounts" ] && break
		while read -r m; do
			[ -n "$m" ] || continue
			umount "$m" 2>/dev/null || { [ "$pass" = 3 ] && umount -l "$m" 2>/dev/null; } || true
		done <<<"$mounts"
	done
	# Network namespaces and links made since the snapshot.
	comm -13 "$HOSTSNAP/netns" <(ip netns list 2>/dev/null | awk '{print $1}' | sort) | while read -r n; do
		ip netns delete "$n" 2>/dev/null || true
	done
	comm -13 "$HOSTSNAP/links" <(ip -o link show 2>/dev/null | awk -F': ' '{sub(/@.*/, "", $2); print $2}' | sort) | while read -r l; do
		ip link delete "$l" 2>/dev/null || true
	done
	ip route del unreachable "$POD_CIDR" 2>/dev/null || true
	ip route del unreachable "$SERVICE_CIDR" 2>/dev/null || true
	ip -6 route del unreachable "$POD6_CIDR" 2>/dev/null || true
	# iptables: drop every table's rules and chains, then load the snapshot.
	for t in filter nat mangle raw security; do
		for cmd in iptables ip6tables; do
			$cmd -t "$t" -F 2>/dev/null || true
			$cmd -t "$t" -X 2>/dev/null || true
		done
	done
	iptables-restore <"$HOSTSNAP/iptables"
	ip6tables-restore <"$HOSTSNAP/ip6tables"
	# With the nf_tables backend the emptied tables stay; delete those the
	# host did not have.
	if command -v nft >/dev/null; then
		for fam in ip ip6; do
			local snap=$HOSTSNAP/iptables; [ $fam = ip6 ] && snap=$HOSTSNAP/ip6tables
			for t in $(nft list tables $fam 2>/dev/null | awk '{print $3}'); do
				grep -q "^\*$t\$" "$snap" || nft delete table $fam "$t" 2>/dev/null || true
			done
		done
	fi
	while IFS='=' read -r k v; do
		sysctl -qw "$k=$v" 2>/dev/null || true
	done <"$HOSTSNAP/sysctls"
	# cgroups made since the snapshot (kubepods, ...), deepest first.
	comm -13 "$HOSTSNAP/cgroups" <(for h in /sys/fs/cgroup/*/; do
		[ -d "$h" ] && find "$h" -mindepth 1 -maxdepth 1 -type d
	done | sort) | while read -r cg; do
		find "$cg" -depth -type d -exec rmdir {} \; 2>/dev/null || true
	done
	[ -f "$HOSTSNAP/netns-bind" ] && { umount /run/netns 2>/dev/null || umount -l /run/netns 2>/dev/null || true; }
	while read -r p; do
		[ -n "$p" ] || continue
		umount "$p" 2>/dev/null || true # `ip netns add` bind-mounts /run/netns on itself
		rm -rf --one-file-system "$p"
	done <"$HOSTSNAP/created-paths"
	rm -rf "$HOSTSNAP"
}

# share_netns_dir: the agent mounts /run/netns with HostToContainer
# propagation (IPAM early release), which shows it namespaces made later
# only if the host's /run/netns is a shared mount; do what `ip netns add`
# does. down unmounts it if up made the bind mount.
share_netns_dir() {
	mkdir -p /run/netns
	if ! mountpoint -q /run/netns; then
		mount --bind /run/netns /run/netns
		touch "$HOSTSNAP/netns-bind"
	fi
	mount --make-shared /run/netns
}

# share_containerd_dir: the agent mounts /run/containerd (the CRI socket,
# for its sweep of the node's IP claims) with HostToContainer propagation,
# which kubelet allows only on a shared or slave mount, as it is on a
# systemd host; this host's / is private, so make /run/containerd a shared
# mount point of its own. down unmounts it with containerd's mounts below.
share_containerd_dir() {
	mkdir -p /run/containerd
	mountpoint -q /run/containerd || mount --rbind /run/containerd /run/containerd
	mount --make-shared /run/containerd
}

# kill_pods: kills every process in a kubepods cgroup (used once kubelet is
# stopped, so nothing restarts them).
kill_pods() {
	local procs
	for i in 1 2 3 4 5; do
		procs=$(find /sys/fs/cgroup/pids/kubepods -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u || true)
		[ -z "$procs" ] && return 0
		kill -KILL $procs 2>/dev/null || true
		sleep 0.5
	done
}

# --- configuration ---------------------------------------------------------------

gen_pki() {
	[ -f "$PKI/done" ] && return 0
	log "generating the cluster CA and certificates"
	mkdir -p "$PKI"
	local ip; ip=$(node_ip)
	(
		cd "$PKI"
		openssl genrsa -out ca.key 2048 2>/dev/null
		openssl req -x509 -new -key ca.key -subj "/CN=berth-local-ca" -days 3650 -out ca.crt 2>/dev/null
		sign() { # name subject extra-extensions
			openssl genrsa -out "$1.key" 2048 2>/dev/null
			openssl req -new -key "$1.key" -subj "$2" -out "$1.csr" 2>/dev/null
			printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\n%s\n' "$3" >"$1.ext"
			openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
				-extfile "$1.ext" -out "$1.crt" 2>/dev/null
			rm -f "$1.csr" "$1.ext"
		}
		sign apiserver "/CN=kube-apiserver" "subjectAltName=IP:127.0.0.1,IP:$ip,IP:$KUBERNETES_SVC,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
		sign admin "/O=system:masters/CN=berth-admin" ""
		sign apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" ""
		sign kubelet "/O=system:nodes/CN=system:node:$NODE_NAME" ""
		sign kubelet-serving "/CN=$NODE_NAME" "subjectAltName=IP:$ip,DNS:$NODE_NAME"
		sign kube-proxy "/CN=system:kube-proxy" ""
		sign kube-controller-manager "/CN=system:kube-controller-manager" ""
		sign kube-scheduler "/CN=system:kube-scheduler" ""
		openssl genrsa -out sa.key 2048 2>/dev/null
		openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
		for u in admin kubelet kube-proxy kube-controller-manager kube-scheduler; do
			cat >"$u.kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters: [{name: berth-local, cluster: {certificate-authority: $PKI/ca.crt, server: "https://$ip:6443"}}]
users: [{name: $u, user: {client-certificate: $PKI/$u.crt, client-key: $PKI/$u.key}}]
contexts: [{name: berth-local, context: {cluster: berth-local, user: $u}}]
current-context: berth-local
KC
		done
	)
	touch "$PKI/done"
}

# put FILE: writes stdin to FILE only if it differs (kube-proxy exits when
# its config file is written), and notes the change in CHANGED so that the
# component reading it is restarted.
CHANGED=""
put() {
	local tmp; tmp=$(mktemp "$1.XXXXXX")
	cat >"$tmp"
	if cmp -s "$tmp" "$1"; then rm -f "$tmp"; else mv "$tmp" "$1"; CHANGED+=" $1"; fi
}

# restart_if_changed NAME FILE: stops NAME if `up` rewrote FILE.
restart_if_changed() {
	case "$CHANGED " in *" $2 "*) running "$1" && log "$2 changed" && stop "$1" ;; esac
	return 0
}

write_configs() {
	local ip; ip=$(node_ip)
	mkdir -p /etc/cni/net.d /var/run/nri
	put "$STATE/containerd.toml" <<EOF
version = 3
root = "/var/lib/containerd"
state = "/run/containerd"
[grpc]
  address = "/run/containerd/containerd.sock"
[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "registry.k8s.io/pause:3.10"
[plugins."io.containerd.cri.v1.runtime"]
  # This host lacks CAP_SYS_RESOURCE: lowering oom_score_adj would fail every sandbox.
  restrict_oom_score_adj = true
  [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
      SystemdCgroup = false
      BinaryName = "$RUNC_BIN/runc"
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["/opt/cni/bin", "$CNI_BIN"]
    conf_dir = "/etc/cni/net.d"
[plugins."io.containerd.nri.v1.nri"]
  disable = false
  socket_path = "/var/run/nri/nri.sock"
EOF
	# Pod traffic stays on this machine: no masquerading, and the host's
	# forwarding chain (below) drops what would leave through another link.
	# Addresses come from berth-ipam (the IPPool "pods" of deploy/local, the
	# node's pod subnet $NODE_POD_SUBNET), retained for each pod's app.
	put /etc/cni/net.d/10-berth.conflist <<EOF
{
  "cniVersion": "1.1.0",
  "name": "berth",
  "plugins": [
    {"type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
     "ipam": {"type": "berth-ipam", "pools": ["pods"]}},
    {"type": "berth-netcheck"},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
	echo "nameserver 127.0.0.1" | put "$STATE/resolv.conf"
	put "$STATE/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
authentication:
  x509: {clientCAFile: $PKI/ca.crt}
  webhook: {enabled: true}
  anonymous: {enabled: false}
authorization: {mode: Webhook}
tlsCertFile: $PKI/kubelet-serving.crt
tlsPrivateKeyFile: $PKI/kubelet-serving.key
clusterDNS: [$CLUSTER_DNS]
clusterDomain: cluster.local
resolvConf: $STATE/resolv.conf
failSwapOn: false
readOnlyPort: 0
protectKernelDefaults: false
# Images come only from local imports: never garbage-collect them.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {"nodefs.available": "1%", "imagefs.available": "1%", "memory.available": "100Mi"}
serializeImagePulls: false
EOF
	put "$STATE/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $PKI/kube-proxy.kubeconfig}
hostnameOverride: $NODE_NAME
mode: iptables
clusterCIDR: $POD_CIDR
# No NodePorts on the host's other addresses, no conntrack tuning of the host.
nodePortAddresses: ["$ip/32"]
conntrack: {maxPerCore: 0}
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
EOF
}

# guard_network: unreachable routes for the pod (IPv4 and IPv6) and Service
# CIDRs, so nothing addressed to them leaves through the default route; and
# forwarding rules that reject pod traffic headed anywhere but the pod
# bridge (the bridge plugin turns on IPv4 and IPv6 forwarding).
guard_network() {
	ip route replace unreachable "$POD_CIDR"
	ip route replace unreachable "$SERVICE_CIDR"
	ip -6 route replace unreachable "$POD6_CIDR"
	local cmd cidr reject
	for cmd in iptables ip6tables; do
		cidr=$POD_CIDR reject=icmp-net-unreachable
		[ $cmd = ip6tables ] && cidr=$POD6_CIDR reject=icmp6-no-route
		$cmd -N BERTH-LOCAL-GUARD 2>/dev/null || $cmd -F BERTH-LOCAL-GUARD
		$cmd -A BERTH-LOCAL-GUARD -s "$cidr" -o "$BRIDGE" -j RETURN
		$cmd -A BERTH-LOCAL-GUARD -s "$cidr" -j REJECT --reject-with $reject
		$cmd -C FORWARD -j BERTH-LOCAL-GUARD 2>/dev/null || $cmd -I FORWARD 1 -j BERTH-LOCAL-GUARD
	done
}

# --- components ----------------------------------------------------------------

start_etcd() {
	start etcd "$ETCD_BIN/etcd" --name "$NODE_NAME" --data-dir "$STATE/etcd" \
		--listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
		--listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
		--initial-cluster "$NODE_NAME=http://127.0.0.1:2380" --listen-metrics-urls http://127.0.0.1:2381
	wait_for 60 "etcd health" curl -sf http://127.0.0.1:2381/health
}

start_containerd() {
	restart_if_changed containerd "$STATE/containerd.toml"
	share_containerd_dir
	start containerd env PATH="$CONTAINERD_BIN:$RUNC_BIN:$PATH" \
		"$CONTAINERD_BIN/containerd" --config "$STATE/containerd.toml"
	wait_for 60 "containerd" $CTR version
	wait_for 30 "the NRI socket" test -S /var/run/nri/nri.sock
}

start_apiserver() {
	local ip; ip=$(node_ip)
	start kube-apiserver "$K8S_BIN/kube-apiserver" --advertise-address="$ip" --bind-address=0.0.0.0 \
		--secure-port=6443 --etcd-servers=http://127.0.0.1:2379 \
		--service-cluster-ip-range="$SERVICE_CIDR" --service-node-port-range=30000-32767 \
		--tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
		--client-ca-file="$PKI/ca.crt" \
		--kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt" \
		--kubelet-client-key="$PKI/apiserver-kubelet-client.key" --kubelet-certificate-authority="$PKI/ca.crt" \
		--service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
		--service-account-issuer=https://kubernetes.default.svc.cluster.local \
		--authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
		--kubelet-preferred-address-types=InternalIP --allow-privileged=true --profiling=false
	wait_for 120 "kube-apiserver /readyz" curl -sf --cacert "$PKI/ca.crt" \
		--cert "$PKI/admin.crt" --key "$PKI/admin.key" "https://$ip:6443/readyz"
}

start_controllers() {
	start kube-controller-manager "$K8S_BIN/kube-controller-manager" \
		--kubeconfig="$PKI/kube-controller-manager.kubeconfig" \
		--authentication-kubeconfig="$PKI/kube-controller-manager.kubeconfig" \
		--authorization-kubeconfig="$PKI/kube-controller-manager.kubeconfig" \
		--service-account-private-key-file="$PKI/sa.key" --root-ca-file="$PKI/ca.crt" \
		--cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
		--service-cluster-ip-range="$SERVICE_CIDR" --cluster-cidr="$POD_CIDR" \
		--use-service-account-credentials=true --leader-elect=false --bind-address=127.0.0.1
	start kube-scheduler "$K8S_BIN/kube-scheduler" --kubeconfig="$PKI/kube-scheduler.kubeconfig" \
		--authentication-kubeconfig="$PKI/kube-scheduler.kubeconfig" \
		--authorization-kubeconfig="$PKI/kube-scheduler.kubeconfig" \
		--leader-elect=false --bind-address=127.0.0.1
}

import_images() {
	local tars=("$OUT"/images/*.tar)
	[ -e "${tars[0]}" ] || die "no images in $OUT/images: run \`make images\` first"
	for t in "${tars[@]}"; do
		$CTR -n k8s.io images import --no-unpack=false "$t" >/dev/null || die "import $t"
	done
	log "imported ${#tars[@]} images into containerd"
}

start_kubelet() {
	restart_if_changed kubelet "$STATE/kubelet.yaml"
	start kubelet "$K8S_BIN/kubelet" --config="$STATE/kubelet.yaml" \
		--kubeconfig="$PKI/kubelet.kubeconfig" --hostname-override="$NODE_NAME" --node-ip="$(node_ip)"
	# Registered, not Ready: the node's network is ready once berth-ipam
	# answers CNI STATUS, i.e. once Berth's agent runs (install_berth).
	wait_for 120 "node $NODE_NAME to register" $KUBECTL get node "$NODE_NAME"
}

start_kube_proxy() {
	restart_if_changed kube-proxy "$STATE/kube-proxy.yaml"
	start kube-proxy "$K8S_BIN/kube-proxy" --config="$STATE/kube-proxy.yaml"
	# Healthy once it has programmed the Services, 10.96.0.1 among them.
	wait_for 60 "kube-proxy to sync" curl -sf http://127.0.0.1:10256/healthz
}

install_addons() {
	local img; img=$(berth_image coredns)
	sed -e "s|COREDNS_IMAGE|$img|" -e "s|CLUSTER_DNS|$CLUSTER_DNS|" "$here/addons/coredns.yaml" |
		$KUBECTL apply -f - >/dev/null
	$KUBECTL -n kube-system rollout status deployment/coredns --timeout=180s >/dev/null
	log "CoreDNS ready at $CLUSTER_DNS"
}

install_berth() {
	log "installing Berth: kubectl apply -k deploy/local"
	# The CRDs first: deploy/local holds an IPPool, which the API server
	# serves only once its CRD is established.
	$KUBECTL apply -f "$ROOT/deploy/base/crds" >/dev/null
	$KUBECTL wait --for=condition=Established --timeout=60s -f "$ROOT/deploy/base/crds" >/dev/null
	$KUBECTL apply -k "$ROOT/deploy/local" >/dev/null
	# `make images` may have rebuilt the image under the same tag: stamp its
	# digest on the pod template, so a new image rolls the pods and the same
	# image leaves them alone.
	local digest; digest=$($CTR -n k8s.io images ls | awk -v r="$(berth_image berth)" '$1==r {print $3}')
	local w
	for w in daemonset/berth-agent deployment/berth-controller; do
		$KUBECTL -n berth-system patch "$w" --type merge \
			-p "{\"spec\":{\"template\":{\"metadata\":{\"annotations\":{\"berth.io/local-image\":\"$digest\"}}}}}" >/dev/null
	done
	for w in daemonset/berth-agent deployment/berth-controller; do
		if ! $KUBECTL -n berth-system rollout status "$w" --timeout=180s; then
			$KUBECTL -n berth-system describe pods
			$KUBECTL -n berth-system logs "$w" --all-containers --tail=50 || true
			die "Berth's $w did not become ready"
		fi
	done
}

# berth_image NAME: the image reference `make images` gave NAME.
berth_image() { cat "$OUT/images/$1.ref"; }

# --- commands --------------------------------------------------------------------

cmd_up() {
	[ "$(id -u)" = 0 ] || die "the local cluster runs real node components: run as root"
	for c in iptables iptables-save ip6tables ip6tables-save ip openssl curl findmnt setsid; do
		command -v "$c" >/dev/null || die "$c not found (make up installs it: see hack/deps)"
	done
	for b in "$K8S_BIN/kubelet" "$ETCD_BIN/etcd" "$CONTAINERD_BIN/containerd" "$RUNC_BIN/runc" "$CNI_BIN/bridge"; do
		[ -x "$b" ] || die "$b missing: run test/cluster/build.sh"
	done
	if ! running containerd && $CTR version >/dev/null 2>&1; then
		die "a containerd not started by this harness serves /run/containerd/containerd.sock; stop it first"
	fi
	local t0=$SECONDS
	mkdir -p "$PIDS" "$LOGS"
	snapshot_host
	share_netns_dir
	gen_pki
	write_configs
	guard_network
	start_etcd
	start_containerd
	start_apiserver
	cp "$PKI/admin.kubeconfig" "$KUBECONFIG_OUT"
	start_controllers
	import_images
	start_kubelet
	start_kube_proxy
	# Berth first: its DaemonSet (host network) installs berth-netcheck and
	# berth-ipam and serves the IPAM socket, which the CNI chain needs before
	# any pod, CoreDNS included, gets networking.
	install_berth
	if ! $KUBECTL wait --for=condition=Ready "node/$NODE_NAME" --timeout=120s >/dev/null; then
		$KUBECTL describe node "$NODE_NAME"
		die "node $NODE_NAME is not Ready"
	fi
	install_addons
	log "cluster up in $((SECONDS - t0))s"
	cat <<EOF

The local cluster is up: one node ($NODE_NAME), Kubernetes $K8S_VERSION, containerd $CONTAINERD_VERSION.
  export KUBECONFIG=$KUBECONFIG_OUT PATH=$K8S_BIN:\$PATH
  kubectl get nodes -o wide
  kubectl -n berth-system get pods
  kubectl run t --image=$(berth_image busybox) --restart=Never -- sleep 3600
Logs of each component: $LOGS/. Stop everything: make down
EOF
}

cmd_down() {
	[ "$(id -u)" = 0 ] || die "run as root"
	stop kube-proxy
	stop kubelet
	stop kube-scheduler
	stop kube-controller-manager
	if running containerd; then
		for id in $($CTR -n k8s.io tasks ls -q 2>/dev/null); do
			$CTR -n k8s.io tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true
		done
	fi
	kill_pods
	if running containerd; then
		for id in $($CTR -n k8s.io tasks ls -q 2>/dev/null); do
			$CTR -n k8s.io tasks delete -f "$id" >/dev/null 2>&1 || true
		done
	fi
	stop containerd
	# Shims that outlived containerd.
	pkill -KILL -f "containerd-shim-runc-v2 .*-address /run/containerd/containerd.sock" 2>/dev/null || true
	stop kube-apiserver
	stop etcd
	restore_host
	rm -rf "$STATE" "$KUBECONFIG_OUT"
	log "local cluster down; host restored"
}

# status: one line per component; exits 0 only when all of them run.
cmd_status() {
	local rc=0
	for c in "${COMPONENTS[@]}"; do
		if running "$c"; then echo "$c running (pid $(pid_of "$c"))"; else echo "$c stopped"; rc=1; fi
	done
	return $rc
}

cmd_restart_containerd() {
	running containerd || die "containerd is not running"
	stop containerd
	start_containerd
	log "containerd restarted"
}

# The fault suite holds a pod's sandbox by stopping kubelet: containers
# run on, nothing on the node acts on the API's changes until it is back.
cmd_stop_kubelet() {
	running kubelet || die "kubelet is not running"
	stop kubelet
	log "kubelet stopped"
}

cmd_start_kubelet() {
	running kubelet && { log "kubelet is running"; return 0; }
	start_kubelet
	log "kubelet started"
}

# One up or down at a time on this host.
lock() {
	mkdir -p "$OUT"
	exec 9>"$OUT/.cluster.flock"
	flock 9
}

case "${1:-}" in
up) lock; cmd_up ;;
down) lock; cmd_down ;;
status) cmd_status ;;
restart-containerd) cmd_restart_containerd ;;
stop-kubelet) cmd_stop_kubelet ;;
start-kubelet) cmd_start_kubelet ;;
*) echo "usage: $0 up|down|status|restart-containerd|stop-kubelet|start-kubelet" >&2; exit 2 ;;
esac
