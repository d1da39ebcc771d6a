# Versions of everything the local cluster builds from source. Sourced by the
# harness scripts; changing a version changes its cache key.
K8S_VERSION=v1.37.2
ETCD_VERSION=v3.6.16
# containerd 2.3.x/2.4.x (to 2.4.2) crash in the NRI StopContainer path when a
# sandbox is already gone; 2.2.x checks for it (shared/recipes/local-node).
CONTAINERD_VERSION=v2.2.9
RUNC_VERSION=v1.5.2
COREDNS_VERSION=v1.15.0
CNI_PLUGINS_VERSION=v1.9.1
