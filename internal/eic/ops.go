package eic

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"golang.org/x/crypto/ssh"

	"github.com/plugin-reconciler/plugin-reconciler/internal/bundle"
	"github.com/plugin-reconciler/plugin-reconciler/internal/plugin"
)

// quote makes s one single-quoted shell word. Every remote command is built
// from validated names and quoted words; nothing from input is spliced raw.
func quote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// Exit codes the remote scripts use to tell outcomes apart.
const (
	exitNotFound   = 44
	exitNotRegular = 45
	exitUnreadable = 46
)

// run executes command, feeding stdin, and returns up to maxOut bytes of
// stdout (more is an error) and the exit status.
func (a *Access) run(ctx context.Context, t Target, command string, stdin io.Reader, maxOut int64) ([]byte, int, error) {
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
			if msg := strings.TrimSpace(stderr.String()); msg != "" && status != exitNotFound && status != exitNotRegular && status != exitUnreadable {
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

func pluginDir(t Target, name string) (string, error) {
	if err := plugin.ValidateName(name); err != nil {
		return "", err
	}
	return t.PluginRoot + "/" + name, nil
}

// ReadManifest returns the plugin's plugin.yaml from the box, at most
// plugin.MaxManifestBytes+1 bytes of it (so a caller can tell it is too
// large). ErrNotFound when there is none. Concurrent reads on one box share
// a command (see manifests.go); with NoReuse each read is its own command.
func (a *Access) ReadManifest(ctx context.Context, t Target, name string) ([]byte, error) {
	if err := plugin.ValidateName(name); err != nil {
		return nil, err
	}
	if err := t.Validate(); err != nil {
		return nil, err
	}
	var r manifestRead
	var err error
	if a.cfg.NoReuse {
		var reads map[string]manifestRead
		reads, err = a.readManifestFiles(ctx, t, []string{name})
		r = reads[name]
	} else {
		r, err = a.readManifestBatched(ctx, t, name)
	}
	if err != nil {
		return nil, err
	}
	switch r.status {
	case 0:
		return r.data, nil
	case exitNotFound:
		return nil, fmt.Errorf("no %s on %s: %w", plugin.ManifestFile, t.InstanceID, ErrNotFound)
	case exitNotRegular:
		return nil, fmt.Errorf("%s on %s is not a regular file: %w", plugin.ManifestFile, t.InstanceID, ErrNotFound)
	case exitUnreadable:
		return nil, fmt.Errorf("%s on %s is not readable: %w", plugin.ManifestFile, t.InstanceID, ErrNotFound)
	default:
		return nil, &RemoteError{InstanceID: t.InstanceID, Status: r.status, Stderr: "reading manifest"}
	}
}

// installScript unpacks a bundle read from stdin into <root>/<name>:
// receive into a staging file beside the target, check its size and digest,
// unpack into a staging directory, then swap it in with two renames, keeping
// the previous version until the swap has succeeded. A cut transfer fails
// the size check; the EXIT trap removes the staging files on every exit
// (signals are turned into exits, and SIGPIPE from a closed channel into
// write errors, so that the trap runs). A lock per plugin serialises
// concurrent installs of one plugin; an install that died between the two
// renames is completed by the next one.
const installScript = `set -eu
umask 022
root=%s name=%s want=%s size=%d
dst="$root/$name" stage="$root/.staging-$name" old="$root/.previous-$name"
mkdir -p "$root"
exec 9>"$root/.$name.lock"
flock 9
trap 'rm -rf "$stage" "$stage.tgz"' EXIT
trap 'exit 70' HUP INT TERM
trap '' PIPE
rm -rf "$stage" "$stage.tgz"
if [ ! -e "$dst" ] && [ -d "$old" ]; then mv "$old" "$dst"; fi
rm -rf "$old"
head -c "$size" >"$stage.tgz"
got=$(wc -c <"$stage.tgz")
if [ "$got" -ne "$size" ]; then echo "transfer cut short: $got of $size bytes" >&2; exit 65; fi
sum=$(sha256sum "$stage.tgz"); sum="sha256:${sum%%%% *}"
if [ "$sum" != "$want" ]; then echo "digest mismatch: got $sum" >&2; exit 66; fi
mkdir "$stage"
tar -xzf "$stage.tgz" -C "$stage" --no-same-owner --no-same-permissions
printf '%%s\n' "$want" >"$stage/.bundle-digest"
if [ -e "$dst" ]; then mv "$dst" "$old"; fi
if ! mv "$stage" "$dst"; then
  if [ -d "$old" ]; then mv "$old" "$dst"; fi
  echo "swap failed" >&2; exit 67
fi
rm -rf "$old"
echo installed
`

// Install installs a packed bundle as <plugin_root>/<name> atomically. The
// bundle is checked locally first (bundle.Check): a bundle that could write
// outside the plugin's directory is refused before anything is sent. When
// the box already holds exactly this bundle, nothing is transferred and
// Install reports unchanged. progress, if set, is called as bytes are sent.
func (a *Access) Install(ctx context.Context, t Target, name string, data []byte, progress func(sent int64)) (changed bool, err error) {
	dir, err := pluginDir(t, name)
	if err != nil {
		return false, err
	}
	if err := CheckBundle(name, data); err != nil {
		return false, err
	}
	digest := bundle.Digest(data)

	// Same bundle already installed: installing twice is a no-op.
	cur, status, err := a.run(ctx, t, fmt.Sprintf(`cat -- %s 2>/dev/null || exit %d`, quote(dir+"/.bundle-digest"), exitNotFound), nil, 256)
	if err != nil {
		return false, err
	}
	if status == 0 && strings.TrimSpace(string(cur)) == digest {
		return false, nil
	}

	script := fmt.Sprintf(installScript, quote(t.PluginRoot), quote(name), quote(digest), len(data))
	var in io.Reader = bytes.NewReader(data)
	if progress != nil {
		in = &progressReader{r: in, fn: progress}
	}
	out, status, err := a.run(ctx, t, "sh -c "+quote(script), in, 1024)
	if err != nil {
		return false, fmt.Errorf("install %s on %s: %w", name, t.InstanceID, err)
	}
	if status != 0 || strings.TrimSpace(string(out)) != "installed" {
		return false, fmt.Errorf("install %s on %s: exit %d: %s", name, t.InstanceID, status, out)
	}
	return true, nil
}

// ReadManifests reads several plugins' manifests in one remote command (a
// missing or unreadable one reads as empty). The reconcile probes plugin by
// plugin; this is the floor it is measured against.
func (a *Access) ReadManifests(ctx context.Context, t Target, names []string) ([][]byte, error) {
	reads, err := a.readManifestFiles(ctx, t, names)
	if err != nil {
		return nil, err
	}
	res := make([][]byte, len(names))
	for i, n := range names {
		res[i] = reads[n].data
	}
	return res, nil
}

// CheckBundle refuses, as a *BundleError, a bundle that is unsafe to unpack
// or that is not the named plugin's. Install runs it first; callers can run
// it before anything else happens.
func CheckBundle(name string, data []byte) error {
	m, err := bundle.Check(data)
	if err != nil {
		return &BundleError{Plugin: name, Reason: err.Error()}
	}
	if m.Name != name {
		return &BundleError{Plugin: name, Reason: fmt.Sprintf("its manifest names plugin %q", m.Name)}
	}
	return nil
}

// RuntimeIdentity returns the identity of the box's running agent runtime;
// it changes whenever the runtime (or the box) restarts.
func (a *Access) RuntimeIdentity(ctx context.Context, t Target) (string, error) {
	out, status, err := a.run(ctx, t, a.cfg.IdentityCommand, nil, 256)
	if err != nil {
		return "", fmt.Errorf("read runtime identity of %s: %w", t.InstanceID, err)
	}
	id := strings.TrimSpace(string(out))
	if status != 0 || id == "" {
		return "", fmt.Errorf("read runtime identity of %s: exit %d, output %q", t.InstanceID, status, id)
	}
	return id, nil
}

// RestartRuntime runs the configured restart command on the box.
func (a *Access) RestartRuntime(ctx context.Context, t Target) error {
	_, status, err := a.run(ctx, t, a.cfg.RestartCommand, nil, 4<<10)
	if err != nil {
		return fmt.Errorf("restart runtime of %s: %w", t.InstanceID, err)
	}
	if status != 0 {
		return fmt.Errorf("restart runtime of %s: exit %d", t.InstanceID, status)
	}
	return nil
}

// RebootInstance reboots the instance through EC2. The shared connection to
// it is dropped; the next operation reconnects with a fresh key.
func (a *Access) RebootInstance(ctx context.Context, t Target) error {
	if err := t.Validate(); err != nil {
		return err
	}
	if _, err := a.cfg.EC2.RebootInstances(ctx, &ec2.RebootInstancesInput{InstanceIds: []string{t.InstanceID}}, a.regionOpt(t)); err != nil {
		return fmt.Errorf("reboot %s: %w", t.InstanceID, err)
	}
	a.mu.Lock()
	c := a.conns[connKey(t)]
	a.mu.Unlock()
	if c != nil {
		a.evict(c)
	}
	return nil
}

// WaitForNewIdentity polls the runtime identity until it differs from old,
// calling tick between attempts (for heartbeats). Connection failures while
// the box comes back are expected and retried until ctx ends.
func (a *Access) WaitForNewIdentity(ctx context.Context, t Target, old string, tick func()) (string, error) {
	var last error
	for {
		id, err := a.RuntimeIdentity(ctx, t)
		if err == nil && id != old {
			return id, nil
		}
		if err != nil {
			last = err
			var perm *HostKeyMismatchError
			if errors.As(err, &perm) {
				return "", err
			}
		}
		if tick != nil {
			tick()
		}
		select {
		case <-ctx.Done():
			if last != nil {
				return "", fmt.Errorf("wait for %s to restart: %w (last error: %v)", t.InstanceID, ctx.Err(), last)
			}
			return "", fmt.Errorf("wait for %s to restart: %w", t.InstanceID, ctx.Err())
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// progressReader reports every read; callers that heartbeat rely on the
// heartbeat's own throttling.
type progressReader struct {
	r  io.Reader
	n  int64
	fn func(int64)
}

func (p *progressReader) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	p.n += int64(n)
	p.fn(p.n)
	return n, err
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
