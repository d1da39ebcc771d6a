package agent

import (
	"github.com/berth-io/berth/agent/logdirs"
	"github.com/berth-io/berth/agent/nriplugin"
)

// hooks lists, in the order they run in CreateContainer, the hooks of the
// agent's NRI plugin. A nil argument is a part that is disabled.
func hooks(fileLogs *logdirs.Manager) []nriplugin.Hook {
	var hs []nriplugin.Hook
	// filelogs (hooks/filelogs): KUBERNETES_FILELOGS bind mounts.
	if fileLogs != nil {
		hs = append(hs, fileLogs)
	}
	return hs
}
