package nriplugin

import (
	"context"
	"fmt"
	"log/slog"

	nrilog "github.com/containerd/nri/pkg/log"
)

// NewNRILogger adapts l to the logger interface of the NRI library. The
// library's informational messages go to debug level: the plugin logs its
// own connect, loss and events at info.
func NewNRILogger(l *slog.Logger) nrilog.Logger { return nriLogger{l} }

type nriLogger struct{ l *slog.Logger }

func (n nriLogger) Debugf(ctx context.Context, format string, args ...any) {
	n.log(ctx, slog.LevelDebug, format, args)
}

func (n nriLogger) Infof(ctx context.Context, format string, args ...any) {
	n.log(ctx, slog.LevelDebug, format, args)
}

func (n nriLogger) Warnf(ctx context.Context, format string, args ...any) {
	n.log(ctx, slog.LevelWarn, format, args)
}

func (n nriLogger) Errorf(ctx context.Context, format string, args ...any) {
	n.log(ctx, slog.LevelError, format, args)
}

func (n nriLogger) log(ctx context.Context, level slog.Level, format string, args []any) {
	if !n.l.Enabled(ctx, level) {
		return
	}
	n.l.Log(ctx, level, fmt.Sprintf(format, args...))
}
