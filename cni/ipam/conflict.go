package ipam

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/berth-io/berth/cni/ipam/protocol"
)

// ReportConflict tells berth-agent at socket that another host answered
// for req.Address on the container's interface (CONFLICT, with
// ContainerID, IfName, Address and MAC set): berth-netcheck calls it
// before it fails the ADD, so that the agent takes the address out of use
// and the pod's next ADD gets another. ctx bounds the call. Its errors
// say why the agent did not take it: not reachable, older than the
// command (it answers HTTP 404), or its own error.
func ReportConflict(ctx context.Context, socket string, req *protocol.Request) error {
	body, err := json.Marshal(req)
	if err != nil {
		return err
	}
	code, data, err := post(ctx, socket, "/v1/"+protocol.CommandConflict, body)
	if err != nil {
		return err
	}
	if code == 404 || code == 405 {
		return fmt.Errorf("berth-agent at %s does not know CONFLICT (HTTP %d): it is older than berth-netcheck", socket, code)
	}
	var out protocol.Response
	if err := protocol.Decode(data, &out); err != nil {
		return fmt.Errorf("berth-agent at %s: HTTP %d: %w", socket, code, err)
	}
	if out.Error != nil {
		return fmt.Errorf("berth-agent at %s: %w", socket, out.Error)
	}
	return nil
}
