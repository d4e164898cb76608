package onbox

import (
	"context"
	"encoding/base64"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/plugin-reconciler/plugin-reconciler/internal/eic"
	"github.com/plugin-reconciler/plugin-reconciler/internal/reconcile"
)

// Manifest reads are coalesced per box: a reconcile probes each plugin in
// its own activity, and those probes reach a box within moments of one
// another. At most one manifest-reading command runs on a box at a time;
// the reads that arrive meanwhile (while it runs, or while the connection
// is being dialled) wait together and go in the next command. Nothing
// waits on purpose: a lone read runs at once. A box then serves a reconcile
// in two or three commands instead of one per plugin, which saves it the
// sessions and shells, and the reconcile the round trips.

// manifestBatchTimeout bounds one batched command; it runs detached from
// any one caller, so that a caller's cancellation does not fail the others.
const manifestBatchTimeout = 45 * time.Second

// manifestRead is one file's outcome in a batch.
type manifestRead struct {
	status int // 0, exitNotFound, exitNotRegular, exitUnreadable
	data   []byte
}

// manifestBatch is the reads waiting for, or running in, one command.
type manifestBatch struct {
	t     reconcile.Box
	names []string
	done  chan struct{}
	reads map[string]manifestRead // set before done is closed
	err   error
}

// manifestBox is a box's batching state: the batch still open to new reads
// and the turn that lets one command run at a time.
type manifestBox struct {
	open  map[string]*manifestBatch // by batchKey (plugin root, host key)
	turn  chan struct{}
	users int
}

func batchKey(t reconcile.Box) string { return t.PluginRoot + "\x00" + t.HostKey }

// readManifestBatched joins (or opens) the box's open batch and waits for
// its result.
func (o *Ops) readManifestBatched(ctx context.Context, t reconcile.Box, name string) (manifestRead, error) {
	key := t.Region + "/" + t.InstanceID + "/" + t.OSUser
	o.mu.Lock()
	select {
	case <-o.stop:
		o.mu.Unlock()
		return manifestRead{}, fmt.Errorf("read manifest on %s: box operations are closed", t.InstanceID)
	default:
	}
	box := o.manifests[key]
	if box == nil {
		box = &manifestBox{open: map[string]*manifestBatch{}, turn: make(chan struct{}, 1)}
		o.manifests[key] = box
	}
	b := box.open[batchKey(t)]
	if b == nil {
		b = &manifestBatch{t: t, done: make(chan struct{})}
		box.open[batchKey(t)] = b
		box.users++
		o.wg.Add(1)
		go o.runManifestBatch(key, box, b)
	}
	if !slices.Contains(b.names, name) {
		b.names = append(b.names, name)
	}
	o.mu.Unlock()

	select {
	case <-b.done:
	case <-ctx.Done():
		return manifestRead{}, ctx.Err()
	}
	if b.err != nil {
		return manifestRead{}, b.err
	}
	return b.reads[name], nil
}

// runManifestBatch waits for the box's turn, closes the batch to new reads
// and runs it as one command.
func (o *Ops) runManifestBatch(key string, box *manifestBox, b *manifestBatch) {
	defer o.wg.Done()
	ctx, cancel := context.WithTimeout(context.Background(), manifestBatchTimeout)
	defer cancel()
	go func() {
		select {
		case <-o.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	// A box without a connection is dialled first: the reads arriving
	// during the dial (the key push and handshake take several round trips)
	// join this batch.
	dialErr := o.access.Warm(ctx, b.t)
	select {
	case box.turn <- struct{}{}:
		defer func() { <-box.turn }()
	case <-ctx.Done():
	}
	o.mu.Lock()
	delete(box.open, batchKey(b.t))
	names := b.names
	o.mu.Unlock()

	switch {
	case dialErr != nil:
		b.err = dialErr
	case ctx.Err() != nil:
		b.err = fmt.Errorf("read manifests on %s: %w", b.t.InstanceID, ctx.Err())
	default:
		b.reads, b.err = o.readManifestFiles(ctx, b.t, names)
	}
	close(b.done)

	o.mu.Lock()
	box.users--
	if box.users == 0 {
		delete(o.manifests, key)
	}
	o.mu.Unlock()
}

// readManifestFiles reads the named plugins' manifests in one command.
// Each file is one output line: its status (the single read's exit codes),
// and for a readable file its first reconcile.MaxManifestBytes+1 bytes in
// base64, so no content can forge another plugin's line.
func (o *Ops) readManifestFiles(ctx context.Context, t reconcile.Box, names []string) (map[string]manifestRead, error) {
	var cmd strings.Builder
	cmd.WriteString("for f in")
	for _, n := range names {
		dir, err := pluginDir(t, n)
		if err != nil {
			return nil, err
		}
		cmd.WriteString(" " + quote(dir+"/"+reconcile.ManifestFile))
	}
	fmt.Fprintf(&cmd, `; do if [ ! -e "$f" ] && [ ! -L "$f" ]; then echo %d; elif [ -L "$f" ] || [ ! -f "$f" ]; then echo %d; elif [ ! -r "$f" ]; then echo %d; else printf '0 '; head -c %d -- "$f" | base64 -w0; echo; fi; done`,
		exitNotFound, exitNotRegular, exitUnreadable, reconcile.MaxManifestBytes+1)
	perFile := int64(base64.StdEncoding.EncodedLen(reconcile.MaxManifestBytes+1) + 8)
	out, status, err := o.access.Run(ctx, t, cmd.String(), nil, int64(len(names))*perFile)
	if err != nil {
		return nil, err
	}
	if status != 0 {
		return nil, &eic.RemoteError{InstanceID: t.InstanceID, Status: status, Stderr: "reading manifests"}
	}
	lines := strings.Split(strings.TrimSuffix(string(out), "\n"), "\n")
	if len(lines) != len(names) {
		return nil, fmt.Errorf("read manifests on %s: %d answers for %d plugins", t.InstanceID, len(lines), len(names))
	}
	reads := make(map[string]manifestRead, len(names))
	for i, line := range lines {
		code, data, _ := strings.Cut(line, " ")
		st, err := strconv.Atoi(code)
		if err != nil {
			return nil, fmt.Errorf("read manifests on %s: bad answer for %s", t.InstanceID, names[i])
		}
		r := manifestRead{status: st}
		if st == 0 {
			if r.data, err = base64.StdEncoding.DecodeString(data); err != nil {
				return nil, fmt.Errorf("read manifests on %s: bad answer for %s: %w", t.InstanceID, names[i], err)
			}
		}
		reads[names[i]] = r
	}
	return reads, nil
}
