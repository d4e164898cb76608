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
	"github.com/plugin-reconciler/plugin-reconciler/internal/store"
)

// BoxAccess is what the activities need from a box.
type BoxAccess interface {
	ReadManifest(ctx context.Context, t eic.Target, name string) ([]byte, error)
	Install(ctx context.Context, t eic.Target, name string, data []byte, progress func(int64)) (bool, error)
	RuntimeIdentity(ctx context.Context, t eic.Target) (string, error)
	RestartRuntime(ctx context.Context, t eic.Target) error
	RebootInstance(ctx context.Context, t eic.Target) error
	WaitForNewIdentity(ctx context.Context, t eic.Target, old string, tick func()) (string, error)
}

// Store is what the activities need from Postgres.
type Store interface {
	Workspace(ctx context.Context, id string) (store.Workspace, error)
	RecordTracking(ctx context.Context, t store.Tracking) error
	MarkRestartPending(ctx context.Context, workspaceID, pluginName string) error
	SealRestartMark(ctx context.Context, workspaceID, pluginName, identity string) error
	RestartState(ctx context.Context, workspaceID string) (store.RestartState, error)
	BeginRestart(ctx context.Context, r store.Restart) (store.Restart, error)
	CompleteRestart(ctx context.Context, r store.Restart, identityAfter string) error
	ClearRestartPending(ctx context.Context, workspaceID string, upTo time.Time) error
	ActiveWorkspaces(ctx context.Context, after string, limit int) ([]store.Declared, error)
}

// Catalog is where bundles come from.
type Catalog interface {
	Bundle(ctx context.Context, name, version string) (catalog.Bundle, error)
}

// Restart modes.
const (
	RestartRuntime = "runtime" // the configured restart command over SSH
	RestartReboot  = "reboot"  // EC2 RebootInstances
)

// Activities is the set of activities with their dependencies.
type Activities struct {
	Box         BoxAccess
	Store       Store
	Catalog     Catalog
	RestartMode string // RestartRuntime (default) or RestartReboot
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
}

// Delivery is what DeliverViaEIC did.
type Delivery struct {
	Digest  string
	Changed bool // false: the box already held exactly this bundle
}

// DeliverViaEIC installs the plugin's bundle on the box. Order matters for
// crash safety: the restart mark is written before the box changes, so a
// crash after the swap can never lose the restart; the mark is sealed with
// the runtime identity read after the swap. Idempotent: the install is a
// no-op when the box holds the same bundle digest, and marking and sealing
// again are upserts.
func (a *Activities) DeliverViaEIC(ctx context.Context, in DeliverInput) (Delivery, error) {
	b, err := a.Catalog.Bundle(ctx, in.Plugin, in.Version)
	if err != nil {
		return Delivery{}, classify(err, "deliver %s@%s", in.Plugin, in.Version)
	}
	// A bundle that would be refused must not leave a restart owed.
	if err := eic.CheckBundle(in.Plugin, b.Data); err != nil {
		return Delivery{}, classify(err, "deliver %s@%s", in.Plugin, in.Version)
	}
	t := in.Workspace.target()
	defer keepAlive(ctx)()
	if err := a.Store.MarkRestartPending(ctx, in.Workspace.ID, in.Plugin); err != nil {
		return Delivery{}, err
	}
	changed, err := a.Box.Install(ctx, t, in.Plugin, b.Data, func(sent int64) {
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
	id, err := a.Box.RuntimeIdentity(ctx, t)
	if err != nil {
		return Delivery{}, classify(err, "deliver %s", in.Plugin)
	}
	if err := a.Store.SealRestartMark(ctx, in.Workspace.ID, in.Plugin, id); err != nil {
		return Delivery{}, err
	}
	if changed {
		activity.GetMetricsHandler(ctx).Counter("plugin_delivery_total").Inc(1)
	}
	return Delivery{Digest: b.Digest, Changed: changed}, nil
}

// RestartFacts is the durable state the restart decision is made from.
type RestartFacts struct {
	PendingSince *time.Time
	// MarkIdentities are the runtime identities read after each pending
	// delivery's swap; "" for a swap that was not verified.
	MarkIdentities []string
	LatestMark     time.Time
	// CurrentIdentity is the runtime's identity now; read only when
	// something is pending.
	CurrentIdentity string
}

// ReadRestartFacts reads the pending restart from the store and, when there
// is one, the runtime's current identity from the box. Read-only.
func (a *Activities) ReadRestartFacts(ctx context.Context, ws Workspace) (RestartFacts, error) {
	st, err := a.Store.RestartState(ctx, ws.ID)
	if err != nil {
		return RestartFacts{}, err
	}
	f := RestartFacts{PendingSince: st.PendingSince}
	for _, m := range st.Marks {
		f.MarkIdentities = append(f.MarkIdentities, m.IdentityAfter)
		if m.MarkedAt.After(f.LatestMark) {
			f.LatestMark = m.MarkedAt
		}
	}
	if st.PendingSince == nil && len(st.Marks) == 0 {
		return f, nil
	}
	if f.CurrentIdentity, err = a.Box.RuntimeIdentity(ctx, ws.target()); err != nil {
		return RestartFacts{}, classify(err, "read runtime identity")
	}
	return f, nil
}

// ClearInput clears pending marks without a restart.
type ClearInput struct {
	WorkspaceID string
	UpTo        time.Time
}

// ClearRestartPending clears the marks the runtime has already outlived.
// Deletes by a cutoff: idempotent.
func (a *Activities) ClearRestartPending(ctx context.Context, in ClearInput) error {
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
	// AlreadyDone: an earlier attempt of this run restarted the box; this
	// attempt only confirmed it.
	AlreadyDone bool
}

// RestartBox restarts the box's runtime (or reboots it) once per run. The
// ledger row, keyed by workflow run, keeps the identity read before the
// first attempt acted: a retry that finds the identity already changed does
// not restart again, it completes the row. The pending mark is cleared only
// after the new identity is seen.
func (a *Activities) RestartBox(ctx context.Context, in RestartInput) (RestartOutcome, error) {
	info := activity.GetInfo(ctx)
	t := in.Workspace.target()
	defer keepAlive(ctx)()
	mode := a.RestartMode
	if mode == "" {
		mode = RestartRuntime
	}
	current, err := a.Box.RuntimeIdentity(ctx, t)
	if err != nil {
		return RestartOutcome{}, classify(err, "restart %s", in.Workspace.InstanceID)
	}
	row, err := a.Store.BeginRestart(ctx, store.Restart{
		WorkspaceID: in.Workspace.ID, WorkflowID: info.WorkflowExecution.ID, RunID: info.WorkflowExecution.RunID,
		Reason: in.Reason, Mode: mode, IdentityBefore: current,
	})
	if err != nil {
		return RestartOutcome{}, err
	}
	out := RestartOutcome{Mode: mode, IdentityBefore: row.IdentityBefore}
	if current != row.IdentityBefore {
		out.AlreadyDone, out.IdentityAfter = true, current
	} else {
		if mode == RestartReboot {
			err = a.Box.RebootInstance(ctx, t)
		} else {
			err = a.Box.RestartRuntime(ctx, t)
		}
		if err != nil {
			return RestartOutcome{}, classify(err, "restart %s", in.Workspace.InstanceID)
		}
		out.IdentityAfter, err = a.Box.WaitForNewIdentity(ctx, t, row.IdentityBefore, func() { activity.RecordHeartbeat(ctx) })
		if err != nil {
			return RestartOutcome{}, classify(err, "restart %s", in.Workspace.InstanceID)
		}
	}
	if err := a.Store.CompleteRestart(ctx, row, out.IdentityAfter); err != nil {
		return RestartOutcome{}, err
	}
	return out, nil
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
