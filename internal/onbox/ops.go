// Package onbox is what the reconciler does on a box, over box access
// (internal/eic): read a plugin's manifest (concurrent reads of one box
// share a command), install a bundle atomically and journal the swap
// (concurrent installs on one box share a transfer and a command), read
// the runtime's identity and the journal, restart the runtime under the
// restart protocol's token, prune the journal. Every command is built from
// validated names and quoted words; nothing from input is spliced raw.
package onbox

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/plugin-reconciler/plugin-reconciler/internal/bundle"
	"github.com/plugin-reconciler/plugin-reconciler/internal/eic"
	"github.com/plugin-reconciler/plugin-reconciler/internal/reconcile"
)

// Default runtime commands for a box whose agent runtime is a systemd unit.
const (
	DefaultRestartCommand  = "sudo systemctl restart agent-runtime.service"
	DefaultIdentityCommand = "systemctl show --property=InvocationID --value agent-runtime.service"
)

// Config configures the commands run on boxes.
type Config struct {
	// RestartCommand restarts the box's agent runtime; IdentityCommand
	// prints one word that changes on every runtime start, before the
	// runtime loads its plugins (a systemd unit's InvocationID, or the boot
	// id). Both come from the operator's configuration, never from workflow
	// input.
	RestartCommand  string
	IdentityCommand string
	// TokenGrace is how long the restart script waits for the effect of a
	// token applied by a run of it that died mid-command before applying
	// the token again; default 60 s (a systemd restart job carries on when
	// its client dies).
	TokenGrace time.Duration
	Logger     *slog.Logger
}

// Ops runs the reconciler's commands on boxes through box access.
type Ops struct {
	access *eic.Access
	cfg    Config

	mu        sync.Mutex
	manifests *batcher[string, manifestRead] // plugin names -> their manifests
	installs  *batcher[installRequest, installOutcome]
	stop      chan struct{}
	wg        sync.WaitGroup
}

// New returns the box operations over access. Close it before access.
func New(access *eic.Access, cfg Config) *Ops {
	if cfg.RestartCommand == "" {
		cfg.RestartCommand = DefaultRestartCommand
	}
	if cfg.IdentityCommand == "" {
		cfg.IdentityCommand = DefaultIdentityCommand
	}
	if cfg.TokenGrace == 0 {
		cfg.TokenGrace = time.Minute
	}
	o := &Ops{access: access, cfg: cfg, stop: make(chan struct{})}
	o.manifests = newBatcher(o, "read manifests", manifestBatchTimeout, func(names []string) bool { return len(names) >= maxManifestBatch }, o.readManifestFiles)
	o.installs = newBatcher(o, "install", installBatchTimeout, installBatchFull, o.installBundles)
	return o
}

// Close stops the batched reads in flight.
func (o *Ops) Close() {
	o.mu.Lock()
	select {
	case <-o.stop:
		o.mu.Unlock()
		return
	default:
	}
	close(o.stop)
	o.mu.Unlock()
	o.wg.Wait()
}

// ErrNotFound is returned when a remote file does not exist.
var ErrNotFound = errors.New("not found")

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

// MissingManifestError is a plugin manifest that is not there to read;
// Miss says how. It is ErrNotFound.
type MissingManifestError struct {
	InstanceID string
	Miss       reconcile.Miss
}

func (e *MissingManifestError) Error() string {
	switch e.Miss {
	case reconcile.MissNotAFile:
		return fmt.Sprintf("%s on %s is not a regular file", reconcile.ManifestFile, e.InstanceID)
	case reconcile.MissUnreadable:
		return fmt.Sprintf("%s on %s is not readable", reconcile.ManifestFile, e.InstanceID)
	}
	return fmt.Sprintf("no %s on %s", reconcile.ManifestFile, e.InstanceID)
}

// Is makes a missing manifest ErrNotFound.
func (e *MissingManifestError) Is(target error) bool { return target == ErrNotFound }

// Paths are where one plugin's files go on a box: its directory, and
// beside it the staging directory and file of an install, the previous
// version kept during a swap, the directory a removal renames aside, and
// the lock that serialises the plugin's changes.
type Paths struct {
	Dir, Stage, StageFile, Previous, Aside, Lock string
}

// PathsOf is where plugin name's files go on box (name is valid). Every
// path but the directory is a dot-name with a '+', which no plugin name
// holds, so no plugin's paths are another's: "x"'s staging file is never
// "x.tgz"'s staging directory, nor any plugin's lock a staging path.
func PathsOf(box reconcile.Box, name string) Paths {
	r := box.PluginRoot + "/"
	return Paths{
		Dir: r + name, Stage: r + ".stage+" + name, StageFile: r + ".stage+" + name + "+tgz",
		Previous: r + ".previous+" + name, Aside: r + ".removing+" + name, Lock: r + ".lock+" + name,
	}
}

func pluginDir(t reconcile.Box, name string) (string, error) {
	if err := reconcile.ValidateName(name); err != nil {
		return "", err
	}
	return t.PluginRoot + "/" + name, nil
}

// ReadManifest returns the plugin's plugin.yaml from the box, at most
// reconcile.MaxManifestBytes+1 bytes of it (so a caller can tell it is too
// large). ErrNotFound when there is none. Concurrent reads on one box share
// a command (see manifests.go).
func (o *Ops) ReadManifest(ctx context.Context, t reconcile.Box, name string) ([]byte, error) {
	if err := reconcile.ValidateName(name); err != nil {
		return nil, err
	}
	if err := t.Validate(); err != nil {
		return nil, err
	}
	r, err := o.manifests.do(ctx, t, name, nil)
	if err != nil {
		return nil, err
	}
	switch r.status {
	case 0:
		return r.data, nil
	case exitNotFound:
		return nil, &MissingManifestError{InstanceID: t.InstanceID, Miss: reconcile.MissNoManifest}
	case exitNotRegular:
		return nil, &MissingManifestError{InstanceID: t.InstanceID, Miss: reconcile.MissNotAFile}
	case exitUnreadable:
		return nil, &MissingManifestError{InstanceID: t.InstanceID, Miss: reconcile.MissUnreadable}
	default:
		return nil, &eic.RemoteError{InstanceID: t.InstanceID, Status: r.status, Stderr: "reading manifest"}
	}
}

// stateDir is where the reconciler keeps its state on a box, beside the
// plugins (a dot-name no plugin can take): the journal of swaps, the lock
// that keeps swaps and restarts apart, and the last restart token applied.
func stateDir(t reconcile.Box) string { return t.PluginRoot + "/.reconciler" }

// purgeFunc is the shell function purge: it removes whatever a path holds,
// never following a link there and whatever the modes inside it (a
// prebuilt bundle's read-only directories, a killed install's leftovers),
// and fails only if the path is still there.
const purgeFunc = `purge() {
  if [ -L "$1" ]; then rm -f -- "$1"
  elif [ -e "$1" ]; then chmod -R u+rwX -- "$1" 2>/dev/null || :; rm -rf -- "$1"
  fi
  [ ! -e "$1" ] && [ ! -L "$1" ]
}
`

// pathEnv is the environment that gives a box script a plugin's paths
// (PathsOf): dst, stage, stagefile, old, aside, lock.
func pathEnv(p Paths) string {
	return fmt.Sprintf("dst=%s stage=%s stagefile=%s old=%s aside=%s lock=%s",
		quote(p.Dir), quote(p.Stage), quote(p.StageFile), quote(p.Previous), quote(p.Aside), quote(p.Lock))
}

// installScript unpacks a bundle read from stdin into the plugin's
// directory (the variables root, name, want, wantm, size and the plugin's
// paths come from its environment, see pathEnv): receive into a staging
// file beside the target, check its size and digest, unpack into a staging
// directory, make every directory there the owner's to write (a prebuilt
// bundle's may be read-only) and write the bundle's digest into it without
// following anything there (noclobber), then swap it in with two renames,
// keeping the previous version until the swap has succeeded. A cut
// transfer fails the size check; the EXIT trap removes the staging files on
// every exit (signals are turned into exits, and SIGPIPE from a closed
// channel into write errors, so that the trap runs). A lock per plugin
// serialises concurrent changes of one plugin. Whatever is at the plugin's
// path, a directory or a link (dangling or not), is renamed aside, never
// followed.
//
// The swap itself is the restart protocol's step (2): it runs under the
// box lock, shared with other swaps and exclusive against a restart, with
// signals ignored, and is journaled with the runtime's identity just before
// and just after the renames, so that a swap and a restart never interleave
// and a swap always leaves the line that owes its restart. An install that
// died between the two renames left the previous version aside and no
// plugin directory: the next change puts it back first, journaled. What
// could make the swap fail after its first journal line (a previous
// version left aside that cannot be removed) is cleared before it. It
// prints the identity it sealed the swap with.
const installScript = `set -euC
umask 022
` + purgeFunc + `mkdir -p "$root" "$state"
exec 9>>"$lock"
flock 9
trap 'purge "$stage" || :; purge "$stagefile" || :' EXIT
trap 'exit 70' HUP INT TERM
trap '' PIPE
# Under the plugin's lock: an attempt that ran meanwhile may have installed
# this very bundle.
if [ -d "$dst" ] && [ ! -L "$dst" ] && [ -f "$dst/.bundle-digest" ] && [ ! -L "$dst/.bundle-digest" ] && [ -f "$dst/plugin.yaml" ] && [ ! -L "$dst/plugin.yaml" ] \
  && [ "$(head -c 100 "$dst/.bundle-digest")" = "$want" ]; then
  m=$(sha256sum <"$dst/plugin.yaml"); m="sha256:${m%%%% *}"
  if [ "$m" = "$wantm" ]; then cat >/dev/null; echo unchanged; exit 0; fi
fi
purge "$stage"; purge "$stagefile"
head -c "$size" >"$stagefile"
got=$(wc -c <"$stagefile")
if [ "$got" -ne "$size" ]; then echo "transfer cut short: $got of $size bytes" >&2; exit 65; fi
sum=$(sha256sum "$stagefile"); sum="sha256:${sum%%%% *}"
if [ "$sum" != "$want" ]; then echo "digest mismatch: got $sum" >&2; exit 66; fi
mkdir "$stage"
tar -xzf "$stagefile" -C "$stage" --no-same-owner --no-same-permissions
chmod -R u+rwX "$stage"
printf '%%s\n' "$want" >"$stage/.bundle-digest"
ident() { sh -c %s </dev/null 2>/dev/null 8>&- 9>&- | head -n 1; }
exec 8>>"$state/lock"
flock -s 8
trap '' HUP INT TERM
id=$(ident)
if [ -z "$id" ]; then echo "cannot read the runtime identity" >&2; exit 68; fi
if [ ! -e "$dst" ] && [ ! -L "$dst" ] && [ -d "$old" ] && [ ! -L "$old" ]; then
  printf '%%s %%s\n' "$name" "$id" >>"$state/journal"
  mv -T -- "$old" "$dst"
fi
if ! purge "$old"; then echo "cannot remove $old" >&2; exit 72; fi
printf '%%s %%s\n' "$name" "$id" >>"$state/journal"
if [ -e "$dst" ] || [ -L "$dst" ]; then mv -T -- "$dst" "$old"; fi
if ! mv -T -- "$stage" "$dst"; then
  if [ -d "$old" ] && [ ! -L "$old" ]; then mv -T -- "$old" "$dst"; fi
  echo "swap failed" >&2; exit 67
fi
# Sealed with the identity after the swap; if it cannot be read, with the
# one before (nothing but a restart, which waits for this lock, changes it).
after=$(ident) || after=
[ -n "$after" ] && id=$after
printf '%%s %%s\n' "$name" "$id" >>"$state/journal"
flock -u 8
purge "$old" || :
echo "installed $id"
`

// Installed is what Install did.
type Installed struct {
	// Changed: the plugin was swapped in; false when the box already held
	// exactly this bundle (its digest and its manifest, byte for byte).
	Changed bool
	// Identity is the runtime identity the swap was journaled with.
	Identity string
	// Manifest is the plugin's manifest as the box holds it after the
	// install, read back in the same command (nil when none could be
	// read), so the caller can verify what is in place.
	Manifest []byte
}

// installBatchTimeout bounds one batched install command.
const installBatchTimeout = 10 * time.Minute

// A batch of installs holds at most maxInstallBatch bundles and, past the
// first, maxInstallBatchBytes: the command grows by a line per bundle (an
// argument is at most 128 KiB), and a large bundle should not hold many
// others to its transfer.
const (
	maxInstallBatch      = 32
	maxInstallBatchBytes = 32 << 20
)

func installBatchFull(reqs []installRequest) bool {
	size := 0
	for _, r := range reqs {
		size += len(r.data)
	}
	return len(reqs) >= maxInstallBatch || size >= maxInstallBatchBytes
}

// installRequest is one bundle to install in a batch.
type installRequest struct {
	name, digest, manifestDigest string
	data                         []byte
}

// installOutcome is one bundle's outcome in a batch.
type installOutcome struct {
	installed Installed
	err       error
}

// Install installs a packed bundle as <plugin_root>/<name> atomically. The
// bundle is checked locally first (bundle.CheckPlugin): a bundle that could
// write outside the plugin's directory, or that is not name@version, is
// refused before anything is sent. Concurrent installs on one box share a
// transfer and a command (see batcher and installBatchScript); each bundle
// is still checked, swapped in and journaled on its own, and fails on its
// own. When the box already holds exactly this bundle, with its manifest
// intact, nothing changes. progress, if set, is called as bytes are sent.
func (o *Ops) Install(ctx context.Context, t reconcile.Box, name, version string, data []byte, progress func(sent int64)) (Installed, error) {
	if err := t.Validate(); err != nil {
		return Installed{}, err
	}
	if _, err := pluginDir(t, name); err != nil {
		return Installed{}, err
	}
	info, err := bundle.CheckPlugin(name, version, data)
	if err != nil {
		return Installed{}, err
	}
	out, err := o.installs.do(ctx, t, installRequest{name: name, digest: bundle.Digest(data), manifestDigest: info.ManifestDigest, data: data}, progress)
	if err != nil {
		return Installed{}, err
	}
	if len(out.installed.Manifest) == 0 {
		out.installed.Manifest = nil
	}
	return out.installed, out.err
}

// installBatchScript receives a batch's bundles as one uncompressed tar
// stream (member i is bundle i) into a directory beside the plugins, then
// runs installScript for each, installsAtOnce side by side as separate
// installs would run (each under its plugin's lock, sharing the box lock),
// with the bundle as its input, and answers one line per bundle in order: the script's exit status, its output and its
// error output (base64), and the plugin's manifest as it then is (base64;
// empty when it is not a readable regular file). One bundle's failure does
// not stop the others. The archive ends with a member named "end": a
// transfer cut anywhere, even between members, fails before any install
// runs. Once the bundles have arrived they are all installed, even if the
// caller has gone meanwhile (each swap is journaled, so the restart it owes
// is not lost). The EXIT trap removes the batch
// directory on every exit it sees; one left by a killed shell is removed by
// a later batch once it is an hour old. The install script is passed once,
// in a variable, so the command grows by a line per bundle.
const installBatchScript = `set -u
umask 022
root=%s
s=%s
mkdir -p "$root" || exit 1
find "$root" -maxdepth 1 -name '.batch-*' -type d -mmin +60 -exec rm -rf {} + 2>/dev/null
b=$(mktemp -d "$root/.batch-XXXXXX") || exit 1
trap 'rm -rf "$b"' EXIT
trap 'exit 70' HUP INT TERM
trap '' PIPE
if ! tar -x -C "$b" -f - --no-same-owner --no-same-permissions || [ ! -f "$b/end" ]; then echo "transfer cut short" >&2; exit 65; fi
answer() {
  a="$st $(printf '%%s' "$out" | base64 -w0) $(head -c 4096 "$b/$1.err" | base64 -w0) "
  m="$root/$2/plugin.yaml"
  if [ -f "$m" ] && [ ! -L "$m" ] && [ -r "$m" ]; then a="$a$(head -c %d -- "$m" | base64 -w0)"; fi
  printf '%%s\n' "$a" >"$b/$1.ans"
}
`

// installsAtOnce bounds the installs of a batch that run at once on a box,
// which also runs its agent: each unpacks, hashes and stages a bundle.
const installsAtOnce = 4

// installBatchLine installs bundle i of a batch, beside the others (at
// most installsAtOnce at a time), and keeps its answer.
const installBatchLine = `(out=$(root="$root" state="$root/.reconciler" name=%[2]s want=%[3]s wantm=%[4]s size=%[5]d %[6]s sh -c "$s" <"$b/%[1]d" 2>"$b/%[1]d.err"); st=$?; answer %[1]d %[2]s) &
`

// installBatchTail waits for a batch's installs and answers for each in
// order (an empty line for one that left no answer).
const installBatchTail = `wait
i=0
while [ "$i" -lt %d ]; do
  if [ -f "$b/$i.ans" ]; then cat "$b/$i.ans" || exit 71; else echo || exit 71; fi
  i=$((i + 1))
done
`

// installBundles installs a batch's bundles in one command (see
// installBatchScript). An error is the batch's (the transfer, the
// connection); each bundle's own failure is in its outcome.
func (o *Ops) installBundles(ctx context.Context, t reconcile.Box, reqs []installRequest, sent func(int64)) ([]installOutcome, error) {
	var archive bytes.Buffer
	tw := tar.NewWriter(&archive)
	var script strings.Builder
	fmt.Fprintf(&script, installBatchScript, quote(t.PluginRoot), quote(fmt.Sprintf(installScript, quote(o.cfg.IdentityCommand))), reconcile.MaxManifestBytes+1)
	names := make([]string, len(reqs))
	for i, r := range reqs {
		names[i] = r.name
		if err := tw.WriteHeader(&tar.Header{Name: strconv.Itoa(i), Mode: 0o600, Size: int64(len(r.data)), Typeflag: tar.TypeReg}); err != nil {
			return nil, err
		}
		if _, err := tw.Write(r.data); err != nil {
			return nil, err
		}
		fmt.Fprintf(&script, installBatchLine, i, quote(r.name), quote(r.digest), quote(r.manifestDigest), len(r.data), pathEnv(PathsOf(t, r.name)))
		if (i+1)%installsAtOnce == 0 {
			script.WriteString("wait\n")
		}
	}
	fmt.Fprintf(&script, installBatchTail, len(reqs))
	if err := tw.WriteHeader(&tar.Header{Name: "end", Mode: 0o600, Typeflag: tar.TypeReg}); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	what := "install " + strings.Join(names, ", ") + " on"
	var in io.Reader = &archive
	if sent != nil {
		in = &progressReader{r: in, fn: sent}
	}
	perBundle := int64(base64.StdEncoding.EncodedLen(1024) + base64.StdEncoding.EncodedLen(4096) + base64.StdEncoding.EncodedLen(reconcile.MaxManifestBytes+1) + 16)
	out, status, err := o.access.Run(ctx, t, "sh -c "+quote(script.String()), in, int64(len(reqs))*perBundle)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", what, t.InstanceID, err)
	}
	if status != 0 {
		return nil, fmt.Errorf("%s %s: exit %d", what, t.InstanceID, status)
	}
	lines := strings.Split(strings.TrimSuffix(string(out), "\n"), "\n")
	if len(lines) != len(reqs) {
		return nil, fmt.Errorf("%s %s: %d answers for %d bundles", what, t.InstanceID, len(lines), len(reqs))
	}
	outcomes := make([]installOutcome, len(reqs))
	for i, line := range lines {
		outcomes[i] = installAnswer(t, reqs[i].name, line)
	}
	return outcomes, nil
}

// installAnswer reads one bundle's line of a batch's answer: its status,
// output, error output and manifest.
func installAnswer(t reconcile.Box, name, line string) installOutcome {
	what := "install " + name + " on"
	fields := strings.Split(line, " ")
	if len(fields) != 4 {
		return installOutcome{err: fmt.Errorf("%s %s: malformed answer", what, t.InstanceID)}
	}
	status, err := strconv.Atoi(fields[0])
	var decoded [3][]byte
	for i := 0; err == nil && i < 3; i++ {
		decoded[i], err = base64.StdEncoding.DecodeString(fields[i+1])
	}
	if err != nil {
		return installOutcome{err: fmt.Errorf("%s %s: malformed answer: %w", what, t.InstanceID, err)}
	}
	var runErr error
	if msg := strings.TrimSpace(string(decoded[1])); status != 0 && msg != "" {
		runErr = &eic.RemoteError{InstanceID: t.InstanceID, Status: status, Stderr: msg}
	}
	changed, id, err := changeAnswer(what, t, decoded[0], status, runErr, "unchanged", "installed")
	return installOutcome{installed: Installed{Changed: changed, Identity: id, Manifest: decoded[2]}, err: err}
}

// change runs a script that changes the plugin root (an install, a
// removal) and reads its answer: noop when it changed nothing, or done
// followed by the runtime identity the change was journaled with.
func (o *Ops) change(ctx context.Context, t reconcile.Box, what, script string, in io.Reader, noop, done string) (changed bool, identity string, err error) {
	out, status, err := o.access.Run(ctx, t, "sh -c "+quote(script), in, 1024)
	return changeAnswer(what, t, out, status, err, noop, done)
}

// changeAnswer reads the answer of a script that changes the plugin root,
// given what running it returned.
func changeAnswer(what string, t reconcile.Box, out []byte, status int, err error, noop, done string) (changed bool, identity string, _ error) {
	if err != nil {
		return false, "", fmt.Errorf("%s %s: %w", what, t.InstanceID, err)
	}
	answer := strings.TrimSpace(string(out))
	if status == 0 && answer == noop {
		return false, "", nil
	}
	id, ok := strings.CutPrefix(answer, done+" ")
	if status != 0 || !ok {
		return false, "", fmt.Errorf("%s %s: exit %d: %s", what, t.InstanceID, status, out)
	}
	return true, id, nil
}

// RuntimeIdentity returns the identity of the box's running agent runtime;
// it changes whenever the runtime (or the box) restarts.
func (o *Ops) RuntimeIdentity(ctx context.Context, t reconcile.Box) (string, error) {
	out, status, err := o.access.Run(ctx, t, o.cfg.IdentityCommand, nil, 256)
	if err != nil {
		return "", fmt.Errorf("read runtime identity of %s: %w", t.InstanceID, err)
	}
	id := strings.TrimSpace(string(out))
	if status != 0 || id == "" {
		return "", fmt.Errorf("read runtime identity of %s: exit %d, output %q", t.InstanceID, status, id)
	}
	return id, nil
}

// RestartResult is how the restart script answered.
type RestartResult string

// Restart script answers.
const (
	RestartDone      RestartResult = "restarted"
	RestartAlready   RestartResult = "already"    // this token was applied before
	RestartNotNeeded RestartResult = "not-needed" // the journal owes nothing
	RestartFailed    RestartResult = "failed"     // the restart command exited non-zero
)

// RestartReply is the restart script's answer.
type RestartReply struct {
	Result   RestartResult
	Before   string // the runtime's identity the token was applied under
	Identity string // the runtime's identity after
	Status   int    // RestartFailed: the command's exit status
	Message  string // RestartFailed: the start of its stderr
}

// restartScript is the restart protocol's steps (3) and (4) on the box.
// Under the box lock, exclusive against swaps:
//   - a token applied before is answered "already" once the runtime's
//     identity has moved on from the one it was applied under (an attempt
//     that timed out, a retry, a reset run all send the token of the
//     restart in flight); a token applied without a visible effect (the
//     script died mid-command) is waited for (Config.TokenGrace), then
//     applied again;
//   - a journal that owes nothing (no line sealed with the current
//     identity) is answered "not-needed", unless forced;
//   - otherwise the token is recorded with the identity before, the
//     configured command restarts the runtime, and the journal is emptied.
//
// Hangups and closed pipes are ignored: a worker that dies or is deployed
// away mid-restart does not cut the restart short. A failed command
// removes the token. Child commands do not inherit the lock's descriptor.
// It answers three lines: the result, the identity before, the identity
// after (or, on failure, "failed", the exit status, the stderr's start).
const restartScript = `set -u
umask 022
trap '' HUP PIPE
root=%s token=%s force=%d grace=%d
state="$root/.reconciler"
mkdir -p "$state" || exit 69
exec 8>"$state/lock" || exit 69
flock 8 || exit 69
ident() { sh -c %s </dev/null 2>/dev/null 8>&- | head -n 1; }
cur=$(ident)
if [ -z "$cur" ]; then echo "cannot read the runtime identity" >&2; exit 68; fi
owed=$force
if [ -f "$state/restart-token" ]; then
  t= before=
  read -r t before <"$state/restart-token" || true
  if [ "$t" = "$token" ]; then
    n=0
    while [ "$cur" = "$before" ] && [ "$n" -lt "$grace" ]; do sleep 1; n=$((n + 1)); cur=$(ident); done
    if [ "$cur" != "$before" ]; then printf 'already\n%%s\n%%s\n' "$before" "$cur"; exit 0; fi
    owed=1
  fi
fi
if [ -f "$state/journal" ]; then
  while IFS= read -r line || [ -n "$line" ]; do
    [ -n "$line" ] || continue
    i=${line#* }
    if [ "$i" = "$line" ] || [ -z "$i" ] || [ "$i" = "$cur" ]; then owed=1; fi
  done <"$state/journal"
fi
if [ "$owed" != 1 ]; then printf 'not-needed\n%%s\n%%s\n' "$cur" "$cur"; exit 0; fi
printf '%%s %%s\n' "$token" "$cur" >"$state/restart-token.new" && mv "$state/restart-token.new" "$state/restart-token" || exit 69
sh -c %s </dev/null >/dev/null 2>"$state/restart.err" 8>&-
rc=$?
if [ "$rc" -ne 0 ]; then
  rm -f "$state/restart-token"
  printf 'failed\n%%d\n' "$rc"; head -c 300 "$state/restart.err" | tr '\n' ' '; echo
  exit 0
fi
: >"$state/journal"
printf 'restarted\n%%s\n%%s\n' "$cur" "$(ident)"
`

var tokenRE = regexp.MustCompile(`^[A-Za-z0-9:/._@+-]{1,400}$`)

// RestartRuntime runs the restart script with token (see restartScript):
// the runtime is restarted at most once per token, and only when the box's
// journal (or force) owes it.
func (o *Ops) RestartRuntime(ctx context.Context, t reconcile.Box, token string, force bool) (RestartReply, error) {
	if !tokenRE.MatchString(token) {
		return RestartReply{}, fmt.Errorf("restart %s: token %q is not a restart id", t.InstanceID, token)
	}
	f := 0
	if force {
		f = 1
	}
	script := fmt.Sprintf(restartScript, quote(t.PluginRoot), quote(token), f, int(o.cfg.TokenGrace.Seconds()), quote(o.cfg.IdentityCommand), quote(o.cfg.RestartCommand))
	out, status, err := o.access.Run(ctx, t, "sh -c "+quote(script), nil, 4<<10)
	if err != nil {
		return RestartReply{}, fmt.Errorf("restart runtime of %s: %w", t.InstanceID, err)
	}
	lines := strings.Split(strings.TrimRight(string(out), "\n"), "\n")
	for len(lines) < 3 {
		lines = append(lines, "")
	}
	r := RestartResult(lines[0])
	switch {
	case status != 0:
		return RestartReply{}, fmt.Errorf("restart runtime of %s: exit %d: %s", t.InstanceID, status, strings.TrimSpace(string(out)))
	case r == RestartDone || r == RestartAlready || r == RestartNotNeeded:
		return RestartReply{Result: r, Before: strings.TrimSpace(lines[1]), Identity: strings.TrimSpace(lines[2])}, nil
	case r == RestartFailed:
		n, err := strconv.Atoi(lines[1])
		if err != nil {
			break
		}
		return RestartReply{Result: r, Status: n, Message: strings.TrimSpace(lines[2])}, nil
	}
	return RestartReply{}, fmt.Errorf("restart runtime of %s: unexpected answer %q", t.InstanceID, out)
}

// maxJournal bounds how much of the journal is read back; a journal cut
// there ends in a line without identity, which counts as owed.
const maxJournal = 64 << 10

// ReadRestartState reads the runtime's identity and the box's journal in
// one command. Read-only: a swap or a restart in progress may be half seen,
// and every half is read conservatively (see internal/reconcile/restart.go).
func (o *Ops) ReadRestartState(ctx context.Context, t reconcile.Box) (identity, journal string, err error) {
	cmd := fmt.Sprintf(`id=$(sh -c %s </dev/null 2>/dev/null | head -n 1); if [ -z "$id" ]; then exit 68; fi; printf '%%s\n' "$id"; j=%s/journal; if [ -f "$j" ]; then head -c %d "$j"; fi`,
		quote(o.cfg.IdentityCommand), quote(stateDir(t)), maxJournal)
	out, status, err := o.access.Run(ctx, t, cmd, nil, maxJournal+1024)
	if err != nil {
		return "", "", fmt.Errorf("read restart state of %s: %w", t.InstanceID, err)
	}
	if status != 0 {
		return "", "", fmt.Errorf("read restart state of %s: the runtime identity cannot be read (exit %d)", t.InstanceID, status)
	}
	identity, journal, _ = strings.Cut(string(out), "\n")
	if len(journal) >= maxJournal {
		journal += "\n(cut)" // a line without identity: owed, to be safe
	}
	return strings.TrimSpace(identity), journal, nil
}

// PruneJournal drops the journal lines the runtime has outlived: under the
// box lock, every line not sealed with the identity it reads now. Called
// after a verified restart (a reboot) or when the decision found nothing
// owed, so a line without an identity is settled too.
func (o *Ops) PruneJournal(ctx context.Context, t reconcile.Box) error {
	cmd := fmt.Sprintf(`set -eu
state=%s
[ -f "$state/journal" ] || exit 0
exec 8>"$state/lock"
flock 8
cur=$(sh -c %s </dev/null 2>/dev/null 8>&- | head -n 1)
[ -n "$cur" ] || exit 68
: >"$state/journal.new"
while IFS= read -r line || [ -n "$line" ]; do
  [ -n "$line" ] || continue
  i=${line#* }
  if [ "$i" != "$line" ] && [ "$i" = "$cur" ]; then printf '%%s\n' "$line" >>"$state/journal.new"; fi
done <"$state/journal"
mv "$state/journal.new" "$state/journal"`, quote(stateDir(t)), quote(o.cfg.IdentityCommand))
	_, status, err := o.access.Run(ctx, t, "sh -c "+quote(cmd), nil, 1024)
	if err != nil {
		return fmt.Errorf("prune the journal of %s: %w", t.InstanceID, err)
	}
	if status != 0 {
		return fmt.Errorf("prune the journal of %s: exit %d", t.InstanceID, status)
	}
	return nil
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

// RebootInstance reboots the instance through EC2 (see eic).
func (o *Ops) RebootInstance(ctx context.Context, t reconcile.Box) error {
	return o.access.RebootInstance(ctx, t)
}

// InstanceRunning fails with the instance's typed error when EC2 says it is
// not running or does not exist (see eic).
func (o *Ops) InstanceRunning(ctx context.Context, t reconcile.Box) error {
	return o.access.InstanceRunning(ctx, t)
}
