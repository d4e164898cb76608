package eic

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"golang.org/x/crypto/ssh"

	"github.com/plugin-reconciler/plugin-reconciler/internal/reconcile"
)

// quiet are exit statuses that answer rather than fail: a command exiting
// with one returns its status, not a RemoteError, whatever its stderr.
var quiet = map[int]bool{44: true, 45: true, 46: true}

// Run executes command on the box t over its shared connection, feeding stdin, and returns up to maxOut bytes of
// stdout (more is an error) and the exit status.
func (a *Access) Run(ctx context.Context, t reconcile.Box, command string, stdin io.Reader, maxOut int64) ([]byte, int, error) {
	var out []byte
	status := 0
	err := a.session(ctx, t, func(s *ssh.Session) error {
		a.commands.Add(1)
		var stderr limitedBuffer
		stderr.max = 4 << 10
		s.Stderr = &stderr
		if stdin != nil {
			s.Stdin = stdin
		}
		stdout, err := s.StdoutPipe()
		if err != nil {
			return err
		}
		if err := s.Start(command); err != nil {
			return fmt.Errorf("start remote command on %s: %w", t.InstanceID, err)
		}
		out, err = io.ReadAll(io.LimitReader(stdout, maxOut+1))
		if err != nil {
			return fmt.Errorf("read remote output on %s: %w", t.InstanceID, err)
		}
		if int64(len(out)) > maxOut {
			return fmt.Errorf("remote output on %s exceeds %d bytes", t.InstanceID, maxOut)
		}
		werr := s.Wait()
		var exit *ssh.ExitError
		switch {
		case werr == nil:
		case errors.As(werr, &exit):
			status = exit.ExitStatus()
			if msg := strings.TrimSpace(stderr.String()); msg != "" && !quiet[status] {
				return &RemoteError{InstanceID: t.InstanceID, Status: status, Stderr: msg}
			}
		default:
			return fmt.Errorf("remote command on %s: %w", t.InstanceID, werr)
		}
		return nil
	})
	return out, status, err
}

// RemoteError is a remote command that exited non-zero with a message.
type RemoteError struct {
	InstanceID string
	Status     int
	Stderr     string
}

func (e *RemoteError) Error() string {
	return fmt.Sprintf("remote command on %s exited %d: %s", e.InstanceID, e.Status, e.Stderr)
}

type limitedBuffer struct {
	buf bytes.Buffer
	max int
}

func (l *limitedBuffer) Write(p []byte) (int, error) {
	if room := l.max - l.buf.Len(); room > 0 {
		if len(p) > room {
			l.buf.Write(p[:room])
		} else {
			l.buf.Write(p)
		}
	}
	return len(p), nil
}

func (l *limitedBuffer) String() string { return l.buf.String() }
