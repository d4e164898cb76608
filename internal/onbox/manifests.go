package onbox

import (
	"context"
	"encoding/base64"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/plugin-reconciler/plugin-reconciler/internal/eic"
	"github.com/plugin-reconciler/plugin-reconciler/internal/reconcile"
)

// Manifest reads are coalesced per box (see batcher): a box then serves a
// reconcile's probes in one to three commands instead of one per plugin,
// which saves it the sessions and shells, and the reconcile the round
// trips.

// manifestBatchTimeout bounds one batched command.
const manifestBatchTimeout = 45 * time.Second

// maxManifestBatch bounds the reads in one command (the command grows by a
// path per read).
const maxManifestBatch = 256

// manifestRead is one file's outcome in a batch.
type manifestRead struct {
	status int // 0, exitNotFound, exitNotRegular, exitUnreadable
	data   []byte
}

// readManifestFiles reads the named plugins' manifests in one command.
// Each file is one output line: its status (the single read's exit codes),
// and for a readable file its first reconcile.MaxManifestBytes+1 bytes in
// base64, so no content can forge another plugin's line.
func (o *Ops) readManifestFiles(ctx context.Context, t reconcile.Box, names []string, _ func(int64)) ([]manifestRead, error) {
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
	reads := make([]manifestRead, len(names))
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
		reads[i] = r
	}
	return reads, nil
}
