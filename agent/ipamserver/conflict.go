package ipamserver

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/berth-io/berth/api/v1alpha1"
	"github.com/berth-io/berth/cni/ipam/protocol"
)

// Event of an address conflict on the pod.
const (
	ReasonAddressConflict = "AddressConflict"
	actionQuarantine      = "Quarantine"
)

// conflict is CONFLICT, which berth-netcheck sends when another host
// answered for req.Address on the container's interface and it fails the
// ADD. The container's claim of the address goes to state Conflict for
// ConflictQuarantine (ipam.Allocator.Quarantine): the DEL the runtime runs
// next keeps it out of use, the pod's next ADD gets another address, and
// berth-controller frees it when the quarantine ends. The pod gets a
// Warning Event AddressConflict, and berth_agent_ipam_address_conflicts_total
// counts it. A repeated report changes nothing.
func (s *Server) conflict(ctx context.Context, req *protocol.Request) *protocol.Response {
	if req.ContainerID == "" || req.IfName == "" || req.Address == "" {
		return errResponse(protocol.CodeInvalidConfig, "berth-ipam CONFLICT needs the container ID, interface and address", nil)
	}
	addr, err := netip.ParseAddr(req.Address)
	if err != nil {
		return errResponse(protocol.CodeInvalidConfig, "berth-ipam CONFLICT: address", err)
	}
	if req.MAC != "" {
		if _, err := net.ParseMAC(req.MAC); err != nil {
			return errResponse(protocol.CodeInvalidConfig, "berth-ipam CONFLICT: mac", err)
		}
	}
	log := s.cfg.Logger.With("container_id", req.ContainerID, "interface", req.IfName, "address", addr.String(), "mac", req.MAC)
	// A prepared claim records its container only after the ADD answered.
	if err := s.binds.wait(ctx, "", "", req.ContainerID); err != nil {
		log.Warn("CONFLICT failed", "err", err)
		return errResponse(protocol.CodeTryAgainLater, "berth-ipam CONFLICT failed", err)
	}
	until := time.Now().Add(s.cfg.ConflictQuarantine).Truncate(time.Second)
	c, changed, err := s.alloc.Quarantine(ctx, req.ContainerID, req.IfName, addr, until)
	if err != nil {
		log.Warn("CONFLICT failed", "err", err)
		return errResponse(protocol.CodeInternal, "berth-ipam CONFLICT failed", err)
	}
	pod := c.Spec.Pod.Namespace + "/" + c.Spec.Pod.Name
	if !changed {
		log.Info("CONFLICT repeated: the address is out of use already", "pod", pod, "claim", c.Name)
		return &protocol.Response{}
	}
	s.metrics.conflicts.WithLabelValues(c.Spec.Pool).Inc()
	log.Warn("another host answered for a pod's address: out of use until the quarantine ends; the pod's next ADD gets another",
		"pod", pod, "pool", c.Spec.Pool, "claim", c.Name, "retained", appString(c.Spec.App), "until", until)
	if rec := s.cfg.Recorder; rec != nil {
		rec.Eventf(podObject(c.Spec.Pod.Namespace, c.Spec.Pod.Name, c.Spec.Pod.UID), nil, corev1.EventTypeWarning, ReasonAddressConflict, actionQuarantine, "%s", conflictNote(c, req.IfName, req.MAC, until))
	}
	return &protocol.Response{}
}

// conflictNote is the Event's message.
func conflictNote(c *v1alpha1.IPClaim, ifName, mac string, until time.Time) string {
	by := "by " + mac
	if mac == "" {
		by = "(the kernel's duplicate address detection failed)"
	}
	note := fmt.Sprintf("IP %s (pool %s) on %s is already in use %s: berth-netcheck failed the network setup; the address is out of use until %s (IPClaim %s, state Conflict) and the next attempt gets another address",
		c.Spec.Address, c.Spec.Pool, ifName, by, until.UTC().Format(time.RFC3339), c.Name)
	if app := c.Spec.App; app != nil && app.Ordinal != nil {
		note += fmt.Sprintf(", retained for StatefulSet %s ordinal %s from then on", app.Name, strconv.Itoa(int(*app.Ordinal)))
	}
	return note
}
