// Package version holds the build's version and commit, set at link time:
//
//	go build -ldflags "-X github.com/berth-io/berth/internal/version.Version=v0.1.0 \
//	  -X github.com/berth-io/berth/internal/version.Commit=$(git rev-parse HEAD)"
package version

import (
	"fmt"
	"runtime"
)

// Version is the release version of this build; "dev" when not set.
var Version = "dev"

// Commit is the source commit of this build; "dev" when not set.
var Commit = "dev"

// String is the one-line form printed by --version.
func String() string {
	return fmt.Sprintf("%s (commit %s, %s)", Version, Commit, runtime.Version())
}
