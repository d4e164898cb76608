// Package activities holds the reconciler's activities: the steps that touch
// a box, the store or the catalog. Activities is a struct of its
// dependencies; workflows refer to its methods through a nil *Activities.
// Every activity is idempotent: each method's comment says why.
package activities

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/temporal"

	"github.com/plugin-reconciler/plugin-reconciler/internal/catalog"
	"github.com/plugin-reconciler/plugin-reconciler/internal/eic"
	"github.com/plugin-reconciler/plugin-reconciler/internal/plugin"
	"github.com/plugin-reconciler/plugin-reconciler/internal/restart"
	"github.com/plugin-reconciler/plugin-reconciler/internal/store"
)

// BoxAccess is what the activities need from a box.
type BoxAccess interface {
	ReadManifest(ctx context.Context, t eic.Target, name string) ([]byte, error)
	Install(ctx context.Context, t eic.Target, name, version string, data []byte, progress func(int64)) (eic.Installed, error)
	ReadRestartState(ctx context.Context, t eic.Target) (identity, journal string, err error)
	RestartRuntime(ctx context.Context, t eic.Target, token string, force bool) (eic.RestartReply, error)
	RebootInstance(ctx context.Context, t eic.Target) error
	InstanceRunning(ctx context.Context, t eic.Target) error
	PruneJournal(ctx context.Context, t eic.Target) error
}

// Store is what the activities need from Postgres.
type Store interface {
	Workspace(ctx context.Context, id string) (store.Workspace, error)
	RecordTracking(ctx context.Context, t store.Tracking) error
	MarkRestartPending(ctx context.Context, workspaceID, pluginName string) (time.Time, error)
	UnmarkRestartPending(ctx context.Context, workspaceID, pluginName string, markedAt time.Time) error
	SealRestartMark(ctx context.Context, workspaceID, pluginName, identity string) error
	RestartState(ctx context.Context, workspaceID string) (store.RestartState, error)
	IssueRestart(ctx context.Context, r store.Restart) (store.Restart, bool, error)
	CompleteRestart(ctx context.Context, workspaceID, restartID, identityAfter, outcome string) error
	FailRestart(ctx context.Context, workspaceID, restartID, reason string) error
	ClearRestartPending(ctx context.Context, workspaceID string, upTo time.Time) error
	ActiveWorkspaces(ctx context.Context, after string, limit int) ([]store.Declared, error)
}

// Catalog is where bundles come from.
type Catalog interface {
	Bundle(ctx context.Context, name, version string) (catalog.Bundle, error)
}

// Restart modes.
const (
	RestartRuntime = restart.ModeRuntime // the configured restart command over SSH
	RestartReboot  = restart.ModeReboot  // EC2 RebootInstances
)

// Activities is the set of activities with their dependencies.
type Activities struct {
	Box         BoxAccess
	Store       Store
	Catalog     Catalog
	RestartMode string // RestartRuntime (default) or RestartReboot
	// RebootGrace: see RestartDefaultRebootGrace (the default).
	RebootGrace time.Duration
}

// Error types of permanent failures. Workflows list them as non-retryable;
// activities return them as non-retryable application errors.
const (
	ErrInvalidInput       = "InvalidInput"
	ErrUnknownWorkspace   = "UnknownWorkspace"
	ErrUnknownPlugin      = "UnknownPlugin"
	ErrHostKeyMismatch    = "HostKeyMismatch"
	ErrInstanceNotRunning = "InstanceNotRunning"
	ErrUnknownInstance    = "UnknownInstance"
	ErrBundleRejected     = "BundleRejected"
	// ErrDigestMismatch: the catalog's bundle is not the one declared.
	ErrDigestMismatch = "DigestMismatch"
	// ErrRestartFailed: the restart command ran and failed in a way
	// retrying cannot mend (missing, not executable, or failing on every
	// attempt: a refused sudo, a broken unit).
	ErrRestartFailed = "RestartFailed"
)

// Workspace is a workspace's box coordinates as the workflows carry them.
// Nothing secret: the host key is a public key.
type Workspace struct {
	ID               string
	InstanceID       string
	Region           string
	AvailabilityZone string
	OSUser           string
	PluginRoot       string
	HostKey          string
}

func (w Workspace) target() eic.Target {
	return eic.Target{
		InstanceID: w.InstanceID, Region: w.Region, AvailabilityZone: w.AvailabilityZone,
		OSUser: w.OSUser, HostKey: w.HostKey, PluginRoot: w.PluginRoot,
	}
}

// classify turns box-access failures into permanent, typed errors; anything
// else stays retryable.
func classify(err error, format string, args ...any) error {
	if err == nil {
		return nil
	}
	msg := fmt.Sprintf(format, args...) + ": " + err.Error()
	var (
		mismatch *eic.HostKeyMismatchError
		state    *eic.InstanceStateError
		unknown  *eic.UnknownInstanceError
		bundle   *eic.BundleError
	)
	switch {
	case errors.As(err, &mismatch):
		return temporal.NewNonRetryableApplicationError(msg, ErrHostKeyMismatch, nil)
	case errors.As(err, &state):
		return temporal.NewNonRetryableApplicationError(msg, ErrInstanceNotRunning, nil)
	case errors.As(err, &unknown):
		return temporal.NewNonRetryableApplicationError(msg, ErrUnknownInstance, nil)
	case errors.As(err, &bundle):
		return temporal.NewNonRetryableApplicationError(msg, ErrBundleRejected, nil)
	case errors.Is(err, catalog.ErrUnknownPlugin):
		return temporal.NewNonRetryableApplicationError(msg, ErrUnknownPlugin, nil)
	case errors.Is(err, store.ErrHostKeyConflict):
		return temporal.NewNonRetryableApplicationError(msg, ErrHostKeyMismatch, nil)
	}
	return fmt.Errorf("%s: %w", fmt.Sprintf(format, args...), err)
}

// keepAlive heartbeats every few seconds until stopped, so that a worker
// that dies during a long step is noticed within the heartbeat timeout.
func keepAlive(ctx context.Context) (stop func()) {
	done := make(chan struct{})
	go func() {
		t := time.NewTicker(3 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-ctx.Done():
				return
			case <-t.C:
				activity.RecordHeartbeat(ctx)
			}
		}
	}()
	return func() { close(done) }
}

// LoadWorkspace reads a workspace's box coordinates. Read-only, so
// idempotent.
func (a *Activities) LoadWorkspace(ctx context.Context, id string) (Workspace, error) {
	w, err := a.Store.Workspace(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return Workspace{}, temporal.NewNonRetryableApplicationError(
			fmt.Sprintf("workspace %q is not registered", id), ErrUnknownWorkspace, nil)
	}
	if err != nil {
		return Workspace{}, err
	}
	if w.Status != "active" {
		return Workspace{}, temporal.NewNonRetryableApplicationError(
			fmt.Sprintf("workspace %q is %s", id, w.Status), ErrUnknownWorkspace, nil)
	}
	ws := Workspace{
		ID: w.ID, InstanceID: w.InstanceID, Region: w.Region, AvailabilityZone: w.AvailabilityZone,
		OSUser: w.OSUser, PluginRoot: w.PluginRoot, HostKey: w.HostKey,
	}
	if err := ws.target().Validate(); err != nil {
		return Workspace{}, temporal.NewNonRetryableApplicationError(
			fmt.Sprintf("workspace %q: %v", id, err), ErrInvalidInput, nil)
	}
	return ws, nil
}

// ProbeInput asks whether a plugin is on a box.
type ProbeInput struct {
	Workspace Workspace
	Plugin    string
}

// Probe is what the box's manifest says. Present is false whenever anything
// is uncertain; Reason says why.
type Probe struct {
	Present bool
	Version string
	Digest  string
	Reason  string
}

// ProbeManifest reads <plugin_root>/<name>/plugin.yaml on the box. A missing,
// empty, oversized, unparseable manifest, or one naming another plugin, is
// "not present" with the reason; transport failures are errors (retried),
// never "present". Read-only, so idempotent.
func (a *Activities) ProbeManifest(ctx context.Context, in ProbeInput) (Probe, error) {
	if err := plugin.ValidateName(in.Plugin); err != nil {
		return Probe{}, temporal.NewNonRetryableApplicationError(err.Error(), ErrInvalidInput, nil)
	}
	defer keepAlive(ctx)()
	p, err := a.probe(ctx, in)
	result := "error"
	switch {
	case err != nil:
	case p.Present:
		result = "present"
	default:
		result = "absent"
	}
	activity.GetMetricsHandler(ctx).WithTags(map[string]string{"result": result}).Counter("plugin_probe_total").Inc(1)
	return p, err
}

func (a *Activities) probe(ctx context.Context, in ProbeInput) (Probe, error) {
	data, err := a.Box.ReadManifest(ctx, in.Workspace.target(), in.Plugin)
	if errors.Is(err, eic.ErrNotFound) {
		// "no plugin.yaml on i-…", "plugin.yaml on i-… is not readable", …
		return Probe{Reason: strings.TrimSuffix(err.Error(), ": "+eic.ErrNotFound.Error())}, nil
	}
	if err != nil {
		return Probe{}, classify(err, "probe %s on %s", in.Plugin, in.Workspace.InstanceID)
	}
	m, err := plugin.ParseManifest(data)
	if err != nil {
		return Probe{Reason: err.Error()}, nil
	}
	if m.Name != in.Plugin {
		return Probe{Reason: fmt.Sprintf("manifest names plugin %q", m.Name)}, nil
	}
	return Probe{Present: true, Version: m.Version, Digest: m.Digest, Reason: "manifest found"}, nil
}

// Via says how a plugin came to be on the box.
const (
	ViaBoot      = "boot"
	ViaReconcile = "reconcile"
)

// TrackInput is a tracking row to write.
type TrackInput struct {
	WorkspaceID string
	Plugin      string
	Version     string
	Digest      string
	Via         string
}

// RecordTracking upserts the plugin's tracking row, stamped with this
// workflow run. An upsert keyed by (workspace, plugin): idempotent.
func (a *Activities) RecordTracking(ctx context.Context, in TrackInput) error {
	info := activity.GetInfo(ctx)
	return a.Store.RecordTracking(ctx, store.Tracking{
		WorkspaceID: in.WorkspaceID, PluginName: in.Plugin, Version: in.Version, Digest: in.Digest,
		InstalledVia: in.Via, WorkflowID: info.WorkflowExecution.ID, RunID: info.WorkflowExecution.RunID,
	})
}

// DeliverInput is a plugin to deliver.
type DeliverInput struct {
	Workspace Workspace
	Plugin    string
	Version   string
	// Digest, when declared, is the bundle the catalog must serve.
	Digest string `json:",omitempty"`
}

// Delivery is what DeliverViaEIC did.
type Delivery struct {
	Digest  string
	Changed bool // false: the box already held exactly this bundle
}

// DeliverViaEIC installs the plugin's bundle on the box: the restart
// protocol's steps (1) and (2) (see internal/restart). The mark is written
// before the box changes; the swap journals itself on the box under the box
// lock, with the runtime identity it happened under, and the mark is sealed
// with it. Idempotent, also when a timed-out attempt still runs: the
// install is a no-op when the box holds the same bundle and manifest, a
// per-plugin lock on the box serialises two installs of one plugin, each
// swap writes its own journal lines, and marking and sealing are upserts.
func (a *Activities) DeliverViaEIC(ctx context.Context, in DeliverInput) (Delivery, error) {
	// Heartbeat from the start: packing a large bundle takes a while.
	defer keepAlive(ctx)()
	b, err := a.Catalog.Bundle(ctx, in.Plugin, in.Version)
	if err != nil {
		return Delivery{}, classify(err, "deliver %s@%s", in.Plugin, in.Version)
	}
	if in.Digest != "" && in.Digest != b.Digest {
		return Delivery{}, temporal.NewNonRetryableApplicationError(
			fmt.Sprintf("deliver %s@%s: declared digest %s, the catalog's bundle is %s", in.Plugin, in.Version, in.Digest, b.Digest),
			ErrDigestMismatch, nil)
	}
	// A bundle that would be refused must not leave a restart owed.
	if _, err := eic.CheckBundle(in.Plugin, in.Version, b.Data); err != nil {
		return Delivery{}, classify(err, "deliver %s@%s", in.Plugin, in.Version)
	}
	t := in.Workspace.target()
	markedAt, err := a.Store.MarkRestartPending(ctx, in.Workspace.ID, in.Plugin)
	if err != nil {
		return Delivery{}, err
	}
	inst, err := a.Box.Install(ctx, t, in.Plugin, in.Version, b.Data, func(sent int64) {
		activity.RecordHeartbeat(ctx, sent)
	})
	if err != nil {
		return Delivery{}, classify(err, "deliver %s@%s to %s", in.Plugin, in.Version, in.Workspace.InstanceID)
	}
	// Verify by reading the manifest back.
	data, err := a.Box.ReadManifest(ctx, t, in.Plugin)
	if err != nil {
		return Delivery{}, classify(err, "verify %s on %s", in.Plugin, in.Workspace.InstanceID)
	}
	if m, err := plugin.ParseManifest(data); err != nil || m.Name != in.Plugin || m.Version != in.Version {
		return Delivery{}, fmt.Errorf("verify %s@%s on %s: manifest read back is %q (%v)", in.Plugin, in.Version, in.Workspace.InstanceID, data, err)
	}
	if !inst.Changed {
		// Nothing swapped: this attempt's mark owes nothing. (A swap by an
		// earlier attempt left its own line in the box's journal.)
		if err := a.Store.UnmarkRestartPending(ctx, in.Workspace.ID, in.Plugin, markedAt); err != nil {
			return Delivery{}, err
		}
		return Delivery{Digest: b.Digest}, nil
	}
	if err := a.Store.SealRestartMark(ctx, in.Workspace.ID, in.Plugin, inst.Identity); err != nil {
		return Delivery{}, err
	}
	activity.GetMetricsHandler(ctx).Counter("plugin_delivery_total").Inc(1)
	return Delivery{Digest: b.Digest, Changed: inst.Changed}, nil
}

// RestartFacts is the durable state the restart decision is made from.
type RestartFacts = restart.Facts

// ReadRestartFacts reads the pending marks and the restart in flight from
// the store, and the runtime's identity and the journal from the box (one
// command). Read-only.
func (a *Activities) ReadRestartFacts(ctx context.Context, ws Workspace) (RestartFacts, error) {
	defer keepAlive(ctx)()
	f, err := restart.ReadFacts(ctx, a.ledger(ctx, ws.ID, ""), a.box(ws))
	if err != nil {
		return RestartFacts{}, classify(err, "read the restart state of %s", ws.InstanceID)
	}
	return f, nil
}

// ClearInput clears pending marks without a restart.
type ClearInput struct {
	WorkspaceID string
	UpTo        time.Time
	// Workspace, when set, has its box's journal pruned of the lines its
	// runtime has outlived.
	Workspace *Workspace `json:",omitempty"`
}

// ClearRestartPending clears the marks made up to UpTo and the journal
// lines the runtime has outlived: nothing is owed for them. Deletes by a
// cutoff, and the prune keeps every line sealed with the current identity:
// idempotent.
func (a *Activities) ClearRestartPending(ctx context.Context, in ClearInput) error {
	if in.Workspace != nil {
		if err := a.Box.PruneJournal(ctx, in.Workspace.target()); err != nil {
			return classify(err, "prune the journal of %s", in.Workspace.InstanceID)
		}
	}
	return a.Store.ClearRestartPending(ctx, in.WorkspaceID, in.UpTo)
}

// RestartInput asks for one restart of a box.
type RestartInput struct {
	Workspace Workspace
	Reason    string
}

// RestartOutcome is what RestartBox did.
type RestartOutcome struct {
	Mode           string
	IdentityBefore string
	IdentityAfter  string
	// AlreadyDone: an earlier attempt (of this run or another) issued the
	// restart; this attempt only saw it through.
	AlreadyDone bool
	// Restarted: the runtime restarted for this request (by this attempt
	// or the one it adopted). False when nothing was owed any more.
	Restarted bool `json:",omitempty"`
	// RestartIDs are the ledger rows this request saw through, in order.
	RestartIDs []string `json:",omitempty"`
	// Reason says why nothing was restarted, when nothing was.
	Reason string `json:",omitempty"`
}

// RestartDefaultRebootGrace is how long a reboot issued by another attempt
// is waited for before it is issued again: EC2 hard-reboots an instance
// that has not shut down cleanly within about four minutes.
const RestartDefaultRebootGrace = 5 * time.Minute

// RestartBox sees the box's owed restart through, exactly once: the
// protocol's steps (3) to (5) (see internal/restart.Run). It decides again
// from the durable state, so a retry, a duplicate attempt running at the
// same time, a redelivered task after a deploy or a reset run adopts the
// restart in flight instead of issuing another, and restarts nothing when
// nothing is owed any more; each round of a run issues its own.
func (a *Activities) RestartBox(ctx context.Context, in RestartInput) (RestartOutcome, error) {
	defer keepAlive(ctx)()
	info := activity.GetInfo(ctx)
	mode := a.RestartMode
	if mode == "" {
		mode = RestartRuntime
	}
	grace := a.RebootGrace
	if grace == 0 {
		grace = RestartDefaultRebootGrace
	}
	res, err := restart.Run(ctx, a.ledger(ctx, in.Workspace.ID, in.Reason), a.box(in.Workspace), restart.Request{
		RestartID: fmt.Sprintf("%s/%s/%s/%d", info.WorkflowExecution.ID, info.WorkflowExecution.RunID, info.ActivityID, info.Attempt),
		Mode:      mode, Reason: in.Reason, Attempt: info.Attempt, RebootGrace: grace,
		Tick: func() { activity.RecordHeartbeat(ctx) },
	})
	var cerr *restart.CommandError
	if errors.As(err, &cerr) {
		msg := fmt.Sprintf("restart %s: %v", in.Workspace.InstanceID, cerr)
		if cerr.Permanent {
			return RestartOutcome{}, temporal.NewNonRetryableApplicationError(msg, ErrRestartFailed, nil)
		}
		return RestartOutcome{}, errors.New(msg)
	}
	if err != nil {
		return RestartOutcome{}, classify(err, "restart %s", in.Workspace.InstanceID)
	}
	out := RestartOutcome{Mode: mode, Restarted: res.Restarted(), AlreadyDone: len(res.Restarts) > 0}
	for i, d := range res.Restarts {
		out.RestartIDs = append(out.RestartIDs, d.RestartID)
		if i == 0 {
			out.IdentityBefore = d.IdentityBefore
		}
		if d.IdentityAfter != "" {
			out.IdentityAfter = d.IdentityAfter
		}
		if !d.Adopted {
			out.AlreadyDone = false
		}
	}
	if len(res.Restarts) == 0 {
		out.Reason = res.Decision.Reason
	}
	if out.Restarted {
		activity.GetMetricsHandler(ctx).Counter("box_restart_done_total").Inc(1)
	}
	return out, nil
}

// ledger is the restart protocol's store side for one workspace.
func (a *Activities) ledger(ctx context.Context, workspaceID, reason string) restart.Ledger {
	var wf, run string
	if activity.IsActivity(ctx) {
		info := activity.GetInfo(ctx)
		wf, run = info.WorkflowExecution.ID, info.WorkflowExecution.RunID
	}
	return storeLedger{st: a.Store, ws: workspaceID, workflowID: wf, runID: run, reason: reason}
}

type storeLedger struct {
	st                            Store
	ws, workflowID, runID, reason string
}

func (l storeLedger) Facts(ctx context.Context) (restart.StoreFacts, error) {
	st, err := l.st.RestartState(ctx, l.ws)
	if err != nil {
		return restart.StoreFacts{}, err
	}
	f := restart.StoreFacts{PendingSince: st.PendingSince, ReadAt: st.ReadAt}
	for _, m := range st.Marks {
		f.MarkIdentities = append(f.MarkIdentities, m.IdentityAfter)
		if !m.Journaled {
			f.LegacyMarks = append(f.LegacyMarks, m.IdentityAfter)
		}
		if m.MarkedAt.After(f.LatestMark) {
			f.LatestMark = m.MarkedAt
		}
	}
	if r := st.InFlight; r != nil {
		f.InFlight = &restart.Issued{RestartID: r.RestartID, Mode: r.Mode, IdentityBefore: r.IdentityBefore, Force: r.Force, Age: st.ReadAt.Sub(r.RequestedAt)}
	}
	return f, nil
}

func (l storeLedger) Issue(ctx context.Context, r restart.Issued, reason string) (restart.Issued, bool, error) {
	row, created, err := l.st.IssueRestart(ctx, store.Restart{
		RestartID: r.RestartID, WorkspaceID: l.ws, WorkflowID: l.workflowID, RunID: l.runID,
		Reason: reason, Mode: r.Mode, IdentityBefore: r.IdentityBefore, Force: r.Force,
	})
	if err != nil {
		return restart.Issued{}, false, err
	}
	return restart.Issued{RestartID: row.RestartID, Mode: row.Mode, IdentityBefore: row.IdentityBefore, Force: row.Force}, created, nil
}

func (l storeLedger) Complete(ctx context.Context, restartID, identityAfter string, outcome restart.Outcome) error {
	return l.st.CompleteRestart(ctx, l.ws, restartID, identityAfter, string(outcome))
}

func (l storeLedger) Fail(ctx context.Context, restartID, reason string) error {
	return l.st.FailRestart(ctx, l.ws, restartID, reason)
}

func (l storeLedger) Clear(ctx context.Context, upTo time.Time) error {
	return l.st.ClearRestartPending(ctx, l.ws, upTo)
}

// box is the restart protocol's box side for one workspace's box.
func (a *Activities) box(ws Workspace) restart.Box { return boxSide{acc: a.Box, t: ws.target()} }

type boxSide struct {
	acc BoxAccess
	t   eic.Target
}

func (b boxSide) State(ctx context.Context) (restart.BoxState, error) {
	id, journal, err := b.acc.ReadRestartState(ctx, b.t)
	if err != nil {
		return restart.BoxState{}, err
	}
	return restart.BoxState{Identity: id, Journal: restart.ParseJournal(journal)}, nil
}

func (b boxSide) RestartRuntime(ctx context.Context, token string, force bool) (restart.Reply, error) {
	r, err := b.acc.RestartRuntime(ctx, b.t, token, force)
	if err != nil {
		return restart.Reply{}, err
	}
	out := restart.Reply{Identity: r.Identity, Status: r.Status, Message: r.Message}
	switch r.Result {
	case eic.RestartDone:
		out.Result = restart.Restarted
	case eic.RestartAlready:
		out.Result = restart.Already
	case eic.RestartNotNeeded:
		out.Result = restart.NotNeeded
	default:
		out.Result = restart.Failed
	}
	return out, nil
}

func (b boxSide) Reboot(ctx context.Context) error  { return b.acc.RebootInstance(ctx, b.t) }
func (b boxSide) Running(ctx context.Context) error { return b.acc.InstanceRunning(ctx, b.t) }
func (b boxSide) Prune(ctx context.Context, _ string) error {
	return b.acc.PruneJournal(ctx, b.t)
}

// PageInput asks for a page of workspaces to sweep.
type PageInput struct {
	After string
	Limit int
}

// DeclaredPlugin is a plugin a sweep re-declares.
type DeclaredPlugin struct {
	Name, Version string
}

// SweepTarget is a workspace a sweep reconciles.
type SweepTarget struct {
	WorkspaceID string
	Plugins     []DeclaredPlugin
}

// ListWorkspaces returns the next page of active workspaces with their
// tracked plugins (the declaration a sweep re-verifies). Read-only.
func (a *Activities) ListWorkspaces(ctx context.Context, in PageInput) ([]SweepTarget, error) {
	ds, err := a.Store.ActiveWorkspaces(ctx, in.After, in.Limit)
	if err != nil {
		return nil, err
	}
	out := make([]SweepTarget, len(ds))
	for i, d := range ds {
		out[i].WorkspaceID = d.WorkspaceID
		for _, p := range d.Plugins {
			out[i].Plugins = append(out[i].Plugins, DeclaredPlugin{Name: p.PluginName, Version: p.Version})
		}
	}
	return out, nil
}
