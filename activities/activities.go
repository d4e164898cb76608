// Package activities holds the reconciler's activities: the steps that touch
// a box, the store or the catalog. Activities is a struct of its
// dependencies; workflows refer to its methods through a nil *Activities.
// Every activity is idempotent: each method's comment says why.
package activities

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/temporal"

	"github.com/plugin-reconciler/plugin-reconciler/internal/bundle"
	"github.com/plugin-reconciler/plugin-reconciler/internal/catalog"
	"github.com/plugin-reconciler/plugin-reconciler/internal/eic"
	"github.com/plugin-reconciler/plugin-reconciler/internal/onbox"
	"github.com/plugin-reconciler/plugin-reconciler/internal/reconcile"
	"github.com/plugin-reconciler/plugin-reconciler/internal/store"
)

// BoxAccess is what the activities need from a box.
type BoxAccess interface {
	ReadManifest(ctx context.Context, t reconcile.Box, name string) ([]byte, error)
	Install(ctx context.Context, t reconcile.Box, name, version string, data []byte, progress func(int64)) (onbox.Installed, error)
	Remove(ctx context.Context, t reconcile.Box, name string) (onbox.Removed, error)
	ReadRestartState(ctx context.Context, t reconcile.Box) (identity, journal string, err error)
	RestartRuntime(ctx context.Context, t reconcile.Box, token string, force bool) (onbox.RestartReply, error)
	RebootInstance(ctx context.Context, t reconcile.Box) error
	InstanceRunning(ctx context.Context, t reconcile.Box) error
	PruneJournal(ctx context.Context, t reconcile.Box) error
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
	Declare(ctx context.Context, in reconcile.DeclareInput, workflowID, runID string) (store.Declaration, []reconcile.Plugin, error)
	Observe(ctx context.Context, workspaceID string, generation int64) error
	ForgetTracking(ctx context.Context, workspaceID, pluginName string) error
}

// Catalog is where bundles come from.
type Catalog interface {
	Bundle(ctx context.Context, name, version string) (catalog.Bundle, error)
}

// Restart modes.
const (
	RestartRuntime = reconcile.ModeRuntime // the configured restart command over SSH
	RestartReboot  = reconcile.ModeReboot  // EC2 RebootInstances
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
		rejected *bundle.PluginError
	)
	switch {
	case errors.As(err, &mismatch):
		return temporal.NewNonRetryableApplicationError(msg, reconcile.ErrHostKeyMismatch, nil)
	case errors.As(err, &state):
		return temporal.NewNonRetryableApplicationError(msg, reconcile.ErrInstanceNotRunning, nil)
	case errors.As(err, &unknown):
		return temporal.NewNonRetryableApplicationError(msg, reconcile.ErrUnknownInstance, nil)
	case errors.As(err, &rejected):
		return temporal.NewNonRetryableApplicationError(msg, reconcile.ErrBundleRejected, nil)
	case errors.Is(err, catalog.ErrUnknownPlugin):
		return temporal.NewNonRetryableApplicationError(msg, reconcile.ErrUnknownPlugin, nil)
	case errors.Is(err, store.ErrHostKeyConflict):
		return temporal.NewNonRetryableApplicationError(msg, reconcile.ErrHostKeyMismatch, nil)
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
func (a *Activities) LoadWorkspace(ctx context.Context, id string) (reconcile.Box, error) {
	w, err := a.Store.Workspace(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return reconcile.Box{}, temporal.NewNonRetryableApplicationError(
			fmt.Sprintf("workspace %q is not registered", id), reconcile.ErrUnknownWorkspace, nil)
	}
	if err != nil {
		return reconcile.Box{}, err
	}
	if w.Status != "active" {
		return reconcile.Box{}, temporal.NewNonRetryableApplicationError(
			fmt.Sprintf("workspace %q is %s", id, w.Status), reconcile.ErrUnknownWorkspace, nil)
	}
	ws := w.Box
	if err := ws.Validate(); err != nil {
		return reconcile.Box{}, temporal.NewNonRetryableApplicationError(
			fmt.Sprintf("workspace %q: %v", id, err), reconcile.ErrInvalidInput, nil)
	}
	return ws, nil
}

// ProbeManifest reads <plugin_root>/<name>/plugin.yaml on the box. A missing,
// empty, oversized, unparseable manifest, or one naming another plugin, is
// "not present" with the reason; transport failures are errors (retried),
// never "present". Read-only, so idempotent.
func (a *Activities) ProbeManifest(ctx context.Context, in reconcile.ProbeInput) (reconcile.Probe, error) {
	if err := reconcile.ValidateName(in.Plugin); err != nil {
		return reconcile.Probe{}, temporal.NewNonRetryableApplicationError(err.Error(), reconcile.ErrInvalidInput, nil)
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

func (a *Activities) probe(ctx context.Context, in reconcile.ProbeInput) (reconcile.Probe, error) {
	data, err := a.Box.ReadManifest(ctx, in.Workspace, in.Plugin)
	var missing *onbox.MissingManifestError
	if errors.As(err, &missing) {
		return reconcile.Probe{Missing: missing.Miss, Reason: missing.Error()}, nil
	}
	if err != nil {
		return reconcile.Probe{}, classify(err, "probe %s on %s", in.Plugin, in.Workspace.InstanceID)
	}
	m, err := reconcile.ParseManifest(data)
	if err != nil {
		return reconcile.Probe{Missing: reconcile.MissInvalid, Reason: err.Error()}, nil
	}
	if m.Name != in.Plugin {
		return reconcile.Probe{Missing: reconcile.MissOtherPlugin, Reason: fmt.Sprintf("manifest names plugin %q", m.Name)}, nil
	}
	return reconcile.Probe{Present: true, Version: m.Version, Digest: m.Digest, Reason: "manifest found"}, nil
}

// RecordTracking upserts the plugin's tracking row, stamped with this
// workflow run. An upsert keyed by (workspace, plugin): idempotent.
func (a *Activities) RecordTracking(ctx context.Context, in reconcile.TrackInput) error {
	info := activity.GetInfo(ctx)
	return a.Store.RecordTracking(ctx, store.Tracking{
		WorkspaceID: in.WorkspaceID, PluginName: in.Plugin, Version: in.Version, Digest: in.Digest,
		InstalledVia: in.Via, WorkflowID: info.WorkflowExecution.ID, RunID: info.WorkflowExecution.RunID,
	})
}

// DeliverViaEIC installs the plugin's bundle on the box: the restart
// protocol's steps (1) and (2) (see internal/reconcile/restart.go). The mark is written
// before the box changes; the swap journals itself on the box under the box
// lock, with the runtime identity it happened under, and the mark is sealed
// with it. Idempotent, also when a timed-out attempt still runs: the
// install is a no-op when the box holds the same bundle and manifest, a
// per-plugin lock on the box serialises two installs of one plugin, each
// swap writes its own journal lines, and marking and sealing are upserts.
func (a *Activities) DeliverViaEIC(ctx context.Context, in reconcile.DeliverInput) (reconcile.Delivery, error) {
	// Heartbeat from the start: packing a large bundle takes a while.
	defer keepAlive(ctx)()
	b, err := a.Catalog.Bundle(ctx, in.Plugin, in.Version)
	if err != nil {
		return reconcile.Delivery{}, classify(err, "deliver %s@%s", in.Plugin, in.Version)
	}
	if in.Digest != "" && in.Digest != b.Digest {
		return reconcile.Delivery{}, temporal.NewNonRetryableApplicationError(
			fmt.Sprintf("deliver %s@%s: declared digest %s, the catalog's bundle is %s", in.Plugin, in.Version, in.Digest, b.Digest),
			reconcile.ErrDigestMismatch, nil)
	}
	// A bundle that would be refused must not leave a restart owed.
	if _, err := bundle.CheckPlugin(in.Plugin, in.Version, b.Data); err != nil {
		return reconcile.Delivery{}, classify(err, "deliver %s@%s", in.Plugin, in.Version)
	}
	t := in.Workspace
	markedAt, err := a.Store.MarkRestartPending(ctx, in.Workspace.ID, in.Plugin)
	if err != nil {
		return reconcile.Delivery{}, err
	}
	inst, err := a.Box.Install(ctx, t, in.Plugin, in.Version, b.Data, func(sent int64) {
		activity.RecordHeartbeat(ctx, sent)
	})
	if err != nil {
		return reconcile.Delivery{}, classify(err, "deliver %s@%s to %s", in.Plugin, in.Version, in.Workspace.InstanceID)
	}
	// Verify the manifest read back (by the install's own command).
	if m, err := reconcile.ParseManifest(inst.Manifest); err != nil || m.Name != in.Plugin || m.Version != in.Version {
		return reconcile.Delivery{}, fmt.Errorf("verify %s@%s on %s: manifest read back is %q (%v)", in.Plugin, in.Version, in.Workspace.InstanceID, inst.Manifest, err)
	}
	if !inst.Changed {
		// Nothing swapped: this attempt's mark owes nothing. (A swap by an
		// earlier attempt left its own line in the box's journal.)
		if err := a.Store.UnmarkRestartPending(ctx, in.Workspace.ID, in.Plugin, markedAt); err != nil {
			return reconcile.Delivery{}, err
		}
		return reconcile.Delivery{Digest: b.Digest}, nil
	}
	if err := a.Store.SealRestartMark(ctx, in.Workspace.ID, in.Plugin, inst.Identity); err != nil {
		return reconcile.Delivery{}, err
	}
	activity.GetMetricsHandler(ctx).Counter("plugin_delivery_total").Inc(1)
	return reconcile.Delivery{Digest: b.Digest, Changed: inst.Changed}, nil
}

// ReadRestartFacts reads the pending marks and the restart in flight from
// the store, and the runtime's identity and the journal from the box (one
// command). Read-only.
func (a *Activities) ReadRestartFacts(ctx context.Context, ws reconcile.Box) (reconcile.RestartFacts, error) {
	defer keepAlive(ctx)()
	f, err := reconcile.ReadRestartFacts(ctx, a.ledger(ctx, ws.ID, ""), a.box(ws))
	if err != nil {
		return reconcile.RestartFacts{}, classify(err, "read the restart state of %s", ws.InstanceID)
	}
	return f, nil
}

// ClearRestartPending clears the marks made up to UpTo and the journal
// lines the runtime has outlived: nothing is owed for them. Deletes by a
// cutoff, and the prune keeps every line sealed with the current identity:
// idempotent.
func (a *Activities) ClearRestartPending(ctx context.Context, in reconcile.ClearInput) error {
	if in.Workspace != nil {
		if err := a.Box.PruneJournal(ctx, *in.Workspace); err != nil {
			return classify(err, "prune the journal of %s", in.Workspace.InstanceID)
		}
	}
	return a.Store.ClearRestartPending(ctx, in.WorkspaceID, in.UpTo)
}

// RestartDefaultRebootGrace is how long a reboot issued by another attempt
// is waited for before it is issued again: EC2 hard-reboots an instance
// that has not shut down cleanly within about four minutes.
const RestartDefaultRebootGrace = 5 * time.Minute

// RestartBox sees the box's owed restart through, exactly once: the
// protocol's steps (3) to (5) (see internal/reconcile.RunRestart). It decides again
// from the durable state, so a retry, a duplicate attempt running at the
// same time, a redelivered task after a deploy or a reset run adopts the
// restart in flight instead of issuing another, and restarts nothing when
// nothing is owed any more; each round of a run issues its own.
func (a *Activities) RestartBox(ctx context.Context, in reconcile.RestartInput) (reconcile.RestartOutcome, error) {
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
	res, err := reconcile.RunRestart(ctx, a.ledger(ctx, in.Workspace.ID, in.Reason), a.box(in.Workspace), reconcile.RestartRequest{
		RestartID: fmt.Sprintf("%s/%s/%s/%d", info.WorkflowExecution.ID, info.WorkflowExecution.RunID, info.ActivityID, info.Attempt),
		Mode:      mode, Reason: in.Reason, Attempt: info.Attempt, RebootGrace: grace,
		Tick: func() { activity.RecordHeartbeat(ctx) },
	})
	var cerr *reconcile.RestartCommandError
	if errors.As(err, &cerr) {
		msg := fmt.Sprintf("restart %s: %v", in.Workspace.InstanceID, cerr)
		if cerr.Permanent {
			return reconcile.RestartOutcome{}, temporal.NewNonRetryableApplicationError(msg, reconcile.ErrRestartFailed, nil)
		}
		return reconcile.RestartOutcome{}, errors.New(msg)
	}
	if err != nil {
		return reconcile.RestartOutcome{}, classify(err, "restart %s", in.Workspace.InstanceID)
	}
	out := reconcile.RestartOutcome{Mode: mode, Restarted: res.Restarted(), AlreadyDone: len(res.Restarts) > 0}
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
func (a *Activities) ledger(ctx context.Context, workspaceID, reason string) reconcile.Ledger {
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

func (l storeLedger) Facts(ctx context.Context) (reconcile.LedgerFacts, error) {
	st, err := l.st.RestartState(ctx, l.ws)
	if err != nil {
		return reconcile.LedgerFacts{}, err
	}
	f := reconcile.LedgerFacts{PendingSince: st.PendingSince, ReadAt: st.ReadAt}
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
		f.InFlight = &reconcile.IssuedRestart{RestartID: r.RestartID, Mode: r.Mode, IdentityBefore: r.IdentityBefore, Force: r.Force, Age: st.ReadAt.Sub(r.RequestedAt)}
	}
	return f, nil
}

func (l storeLedger) Issue(ctx context.Context, r reconcile.IssuedRestart, reason string) (reconcile.IssuedRestart, bool, error) {
	row, created, err := l.st.IssueRestart(ctx, store.Restart{
		RestartID: r.RestartID, WorkspaceID: l.ws, WorkflowID: l.workflowID, RunID: l.runID,
		Reason: reason, Mode: r.Mode, IdentityBefore: r.IdentityBefore, Force: r.Force,
	})
	if err != nil {
		return reconcile.IssuedRestart{}, false, err
	}
	return reconcile.IssuedRestart{RestartID: row.RestartID, Mode: row.Mode, IdentityBefore: row.IdentityBefore, Force: row.Force}, created, nil
}

func (l storeLedger) Complete(ctx context.Context, restartID, identityAfter string, outcome reconcile.LedgerOutcome) error {
	return l.st.CompleteRestart(ctx, l.ws, restartID, identityAfter, string(outcome))
}

func (l storeLedger) Fail(ctx context.Context, restartID, reason string) error {
	return l.st.FailRestart(ctx, l.ws, restartID, reason)
}

func (l storeLedger) Clear(ctx context.Context, upTo time.Time) error {
	return l.st.ClearRestartPending(ctx, l.ws, upTo)
}

// box is the restart protocol's box side for one workspace's box.
func (a *Activities) box(ws reconcile.Box) reconcile.BoxSide { return boxSide{acc: a.Box, t: ws} }

type boxSide struct {
	acc BoxAccess
	t   reconcile.Box
}

func (b boxSide) State(ctx context.Context) (reconcile.BoxState, error) {
	id, journal, err := b.acc.ReadRestartState(ctx, b.t)
	if err != nil {
		return reconcile.BoxState{}, err
	}
	return reconcile.BoxState{Identity: id, Journal: reconcile.ParseJournal(journal)}, nil
}

func (b boxSide) RestartRuntime(ctx context.Context, token string, force bool) (reconcile.RestartReply, error) {
	r, err := b.acc.RestartRuntime(ctx, b.t, token, force)
	if err != nil {
		return reconcile.RestartReply{}, err
	}
	out := reconcile.RestartReply{Identity: r.Identity, Status: r.Status, Message: r.Message}
	switch r.Result {
	case onbox.RestartDone:
		out.Result = reconcile.LedgerRestarted
	case onbox.RestartAlready:
		out.Result = reconcile.LedgerAlready
	case onbox.RestartNotNeeded:
		out.Result = reconcile.LedgerNotNeeded
	default:
		out.Result = reconcile.LedgerFailed
	}
	return out, nil
}

func (b boxSide) Reboot(ctx context.Context) error  { return b.acc.RebootInstance(ctx, b.t) }
func (b boxSide) Running(ctx context.Context) error { return b.acc.InstanceRunning(ctx, b.t) }
func (b boxSide) Prune(ctx context.Context, _ string) error {
	return b.acc.PruneJournal(ctx, b.t)
}

// ListWorkspaces returns the next page of active workspaces with their
// tracked plugins (the declaration a sweep re-verifies). Read-only.
func (a *Activities) ListWorkspaces(ctx context.Context, in reconcile.PageInput) ([]reconcile.SweepTarget, error) {
	ds, err := a.Store.ActiveWorkspaces(ctx, in.After, in.Limit)
	if err != nil {
		return nil, err
	}
	out := make([]reconcile.SweepTarget, len(ds))
	for i, d := range ds {
		out[i].WorkspaceID = d.WorkspaceID
		for _, p := range d.Plugins {
			out[i].Plugins = append(out[i].Plugins, reconcile.DeclaredPlugin(p))
		}
	}
	return out, nil
}

// RecordDeclaration loads the workspace's box (as LoadWorkspace does) and
// records the declaration a reconcile was given (with Prune the whole set,
// without it an addition, with Converge none), returning the stored
// declaration with the tracked plugins it does not hold. Idempotent, also
// for two attempts at once: the generation moves only when the set
// changes, under the workspace's row lock. A dry run writes nothing.
func (a *Activities) RecordDeclaration(ctx context.Context, in reconcile.DeclareInput) (reconcile.Declared, error) {
	ws, err := a.LoadWorkspace(ctx, in.WorkspaceID)
	if err != nil {
		return reconcile.Declared{}, err
	}
	info := activity.GetInfo(ctx)
	d, undeclared, err := a.Store.Declare(ctx, in, info.WorkflowExecution.ID, info.WorkflowExecution.RunID)
	if err != nil {
		return reconcile.Declared{}, err
	}
	return reconcile.Declared{Workspace: ws, Generation: d.Generation, Observed: d.ObservedGeneration, Plugins: d.Plugins, Undeclared: undeclared}, nil
}

// ObserveDeclaration marks a generation reconciled in full. It never goes
// back: idempotent.
func (a *Activities) ObserveDeclaration(ctx context.Context, in reconcile.ObserveInput) error {
	return a.Store.Observe(ctx, in.WorkspaceID, in.Generation)
}

// RemoveViaEIC removes a plugin no longer declared from the box: a change
// like a delivery. The mark is written before the box is touched; the
// removal renames the plugin aside under the box lock and journals itself
// as a swap does, and the mark is sealed with the identity it ran under (or
// taken back when the box did not have the plugin). Idempotent: removing
// what is gone is a no-op, the plugin's lock on the box serialises two
// attempts, marking and sealing are upserts.
func (a *Activities) RemoveViaEIC(ctx context.Context, in reconcile.RemoveInput) (reconcile.Removal, error) {
	defer keepAlive(ctx)()
	if err := reconcile.ValidateName(in.Plugin); err != nil {
		return reconcile.Removal{}, temporal.NewNonRetryableApplicationError(err.Error(), reconcile.ErrInvalidInput, nil)
	}
	markedAt, err := a.Store.MarkRestartPending(ctx, in.Workspace.ID, in.Plugin)
	if err != nil {
		return reconcile.Removal{}, err
	}
	rm, err := a.Box.Remove(ctx, in.Workspace, in.Plugin)
	if err != nil {
		return reconcile.Removal{}, classify(err, "remove %s from %s", in.Plugin, in.Workspace.InstanceID)
	}
	if !rm.Changed {
		return reconcile.Removal{}, a.Store.UnmarkRestartPending(ctx, in.Workspace.ID, in.Plugin, markedAt)
	}
	if err := a.Store.SealRestartMark(ctx, in.Workspace.ID, in.Plugin, rm.Identity); err != nil {
		return reconcile.Removal{}, err
	}
	activity.GetMetricsHandler(ctx).Counter("plugin_removal_total").Inc(1)
	return reconcile.Removal{Changed: true}, nil
}

// ForgetTracking deletes a removed plugin's tracking row. A delete by key:
// idempotent.
func (a *Activities) ForgetTracking(ctx context.Context, in reconcile.TrackInput) error {
	return a.Store.ForgetTracking(ctx, in.WorkspaceID, in.Plugin)
}
