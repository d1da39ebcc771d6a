package netcheck

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/berth-io/berth/cni/ipam/protocol"
)

// Defaults: cheap on a healthy network, where the owner of a duplicate
// address and the gateway answer within a millisecond or two.
const (
	DefaultConflictWindow = 100 * time.Millisecond
	DefaultProbes         = 3
	DefaultTimeout        = 200 * time.Millisecond
	DefaultTries          = 3
	// DefaultReportTimeout bounds telling berth-agent of a conflict.
	DefaultReportTimeout = 3 * time.Second
)

// Limits of the settings.
const (
	minWindow  = 10 * time.Millisecond
	maxWindow  = 10 * time.Second
	maxProbes  = 10
	maxTries   = 20
	maxTargets = 16
)

// Config is berth-netcheck's part of its CNI configuration. The zero value
// of a field means its default; NewChecker validates it.
type Config struct {
	// ConflictWindow is how long replies to the duplicate-address probes
	// are awaited; only a conflict ends it early. JSON "conflictWindow".
	ConflictWindow time.Duration
	// Probes is the number of ARP probes or NDP solicitations per address,
	// spread evenly over the window. JSON "probes".
	Probes int
	// Timeout is how long one try to reach the gateway or a target waits
	// for its answer. JSON "timeout".
	Timeout time.Duration
	// Tries is how many times the gateway and each target are tried before
	// they count as unreachable. JSON "tries".
	Tries int
	// SkipGateway turns the gateway check off. JSON "skipGateway".
	SkipGateway bool
	// ICMP also sends an ICMP echo to the gateway (and to targets on the
	// pod's subnet) once it is resolved. JSON "icmp".
	ICMP bool
	// Targets are extra addresses that must answer. JSON "targets".
	Targets []Target
	// IPAMSocket is berth-agent's IPAM socket, where ADD reports an
	// address another host answered for (CONFLICT) before it fails, so
	// that the pod's next ADD gets another address. Default
	// protocol.DefaultSocket. JSON "ipamSocket".
	IPAMSocket string
}

// Target is an extra address to check: ARP/NDP (and ICMP echo with ICMP
// set) when it is on one of the pod's subnets, ICMP echo when it is not,
// and a TCP connection when Port is set.
type Target struct {
	Addr netip.Addr
	Port uint16
}

// String is the target as written in the configuration.
func (t Target) String() string {
	if t.Port == 0 {
		return t.Addr.String()
	}
	return netip.AddrPortFrom(t.Addr, t.Port).String()
}

// NetConf is the whole configuration berth-netcheck reads on stdin: the
// standard CNI keys and its own.
type NetConf struct {
	types.PluginConf
	Config Config
}

// standardKeys are the CNI keys a runtime may pass to any plugin.
var standardKeys = []string{"args", "capabilities", "cni.dev/valid-attachments", "cniVersion", "name", "prevResult", "runtimeConfig", "type"}

// ownKeys are berth-netcheck's keys, in the order the docs list them.
var ownKeys = []string{"conflictWindow", "probes", "timeout", "tries", "skipGateway", "icmp", "targets", "ipamSocket"}

// ErrConfig marks a configuration error.
var ErrConfig = errors.New("config")

// ParseConfig decodes and validates the configuration on stdin strictly:
// every key must be a standard CNI key or one of berth-netcheck's, with
// exactly that spelling.
func ParseConfig(stdin []byte) (*NetConf, error) {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(stdin, &raw); err != nil {
		return nil, fmt.Errorf("%w: not a JSON object: %w", ErrConfig, err)
	}
	if raw == nil {
		return nil, fmt.Errorf("%w: not a JSON object", ErrConfig)
	}
	keys := make([]string, 0, len(raw))
	for k := range raw {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		if !slices.Contains(standardKeys, k) && !slices.Contains(ownKeys, k) {
			return nil, fmt.Errorf("%w: unknown key %q; berth-netcheck accepts %s and the standard CNI keys",
				ErrConfig, k, strings.Join(ownKeys, ", "))
		}
	}

	conf := &NetConf{}
	std := make(map[string]json.RawMessage, len(raw))
	for _, k := range standardKeys {
		if v, ok := raw[k]; ok {
			std[k] = v
		}
	}
	b, _ := json.Marshal(std) // re-encoding decoded raw messages cannot fail
	if err := json.Unmarshal(b, &conf.PluginConf); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}

	c := &conf.Config
	for _, k := range ownKeys {
		v, ok := raw[k]
		if !ok {
			continue
		}
		var err error
		switch k {
		case "conflictWindow":
			c.ConflictWindow, err = decodeDuration(v)
		case "timeout":
			c.Timeout, err = decodeDuration(v)
		case "probes":
			c.Probes, err = decodeInt(v)
		case "tries":
			c.Tries, err = decodeInt(v)
		case "skipGateway":
			c.SkipGateway, err = decodeBool(v)
		case "icmp":
			c.ICMP, err = decodeBool(v)
		case "targets":
			c.Targets, err = decodeTargets(v)
		case "ipamSocket":
			err = json.Unmarshal(v, &c.IPAMSocket)
			if err != nil {
				err = fmt.Errorf("want an absolute path, got %s", v)
			}
		}
		if err != nil {
			return nil, fmt.Errorf("%w: %s: %w", ErrConfig, k, err)
		}
	}
	if err := c.validate(); err != nil {
		return nil, err
	}
	return conf, nil
}

func decodeDuration(v json.RawMessage) (time.Duration, error) {
	var s string
	if err := json.Unmarshal(v, &s); err != nil {
		return 0, fmt.Errorf(`want a duration string such as "100ms", got %s`, v)
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf(`want a duration string such as "100ms", got %q`, s)
	}
	return d, nil
}

func decodeInt(v json.RawMessage) (int, error) {
	n, err := strconv.Atoi(string(bytes.TrimSpace(v)))
	if err != nil {
		return 0, fmt.Errorf("want a whole number, got %s", v)
	}
	return n, nil
}

func decodeBool(v json.RawMessage) (bool, error) {
	switch string(bytes.TrimSpace(v)) {
	case "true":
		return true, nil
	case "false":
		return false, nil
	}
	return false, fmt.Errorf("want true or false, got %s", v)
}

func decodeTargets(v json.RawMessage) ([]Target, error) {
	var ss []string
	if err := json.Unmarshal(v, &ss); err != nil {
		return nil, fmt.Errorf(`want a list of strings such as ["10.96.0.10:53"], got %s`, v)
	}
	ts := make([]Target, 0, len(ss))
	for _, s := range ss {
		t, err := ParseTarget(s)
		if err != nil {
			return nil, err
		}
		ts = append(ts, t)
	}
	return ts, nil
}

// ParseTarget reads "IP" or "IP:port" ("[IPv6]:port"). Names are refused:
// the plugin resolves nothing.
func ParseTarget(s string) (Target, error) {
	if a, err := netip.ParseAddr(s); err == nil {
		if a.Zone() != "" {
			return Target{}, fmt.Errorf("target %q: zones are not supported", s)
		}
		t := Target{Addr: a.Unmap()}
		return t, t.check()
	}
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return Target{}, fmt.Errorf(`target %q: want an IP address or IP:port ("[IPv6]:port")`, s)
	}
	if ap.Port() == 0 {
		return Target{}, fmt.Errorf("target %q: port 0", s)
	}
	if ap.Addr().Zone() != "" {
		return Target{}, fmt.Errorf("target %q: zones are not supported", s)
	}
	t := Target{Addr: ap.Addr().Unmap(), Port: ap.Port()}
	return t, t.check()
}

// check refuses addresses that no host answers for.
func (t Target) check() error {
	a := t.Addr
	if !a.IsValid() {
		return errors.New("a target without an address")
	}
	if a.IsUnspecified() || a.IsMulticast() || a.IsLoopback() || (a.Is4() && a == netip.AddrFrom4([4]byte{255, 255, 255, 255})) {
		return fmt.Errorf("target %q: want a unicast address", t)
	}
	return nil
}

// withDefaults returns c with its zero fields set to the defaults.
func (c Config) withDefaults() Config {
	if c.ConflictWindow == 0 {
		c.ConflictWindow = DefaultConflictWindow
	}
	if c.Probes == 0 {
		c.Probes = DefaultProbes
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.Tries == 0 {
		c.Tries = DefaultTries
	}
	if c.IPAMSocket == "" {
		c.IPAMSocket = protocol.DefaultSocket
	}
	return c
}

// validate checks c; zero fields stand for their defaults.
func (c Config) validate() error {
	c = c.withDefaults()
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrConfig, fmt.Sprintf(format, args...))
	}
	if c.ConflictWindow < minWindow || c.ConflictWindow > maxWindow {
		return bad("conflictWindow %s: want %s to %s", c.ConflictWindow, minWindow, maxWindow)
	}
	if c.Probes < 1 || c.Probes > maxProbes {
		return bad("probes %d: want 1 to %d", c.Probes, maxProbes)
	}
	if c.Timeout < minWindow || c.Timeout > maxWindow {
		return bad("timeout %s: want %s to %s", c.Timeout, minWindow, maxWindow)
	}
	if c.Tries < 1 || c.Tries > maxTries {
		return bad("tries %d: want 1 to %d", c.Tries, maxTries)
	}
	if !filepath.IsAbs(c.IPAMSocket) {
		return bad("ipamSocket %q: want an absolute path", c.IPAMSocket)
	}
	if len(c.Targets) > maxTargets {
		return bad("targets: %d, want at most %d", len(c.Targets), maxTargets)
	}
	for _, t := range c.Targets {
		if err := t.check(); err != nil {
			return bad("targets: %v", err)
		}
	}
	return nil
}
