package workflows

import (
	"fmt"
	"time"

	"go.temporal.io/sdk/workflow"

	"github.com/plugin-reconciler/plugin-reconciler/internal/reconcile"
)

// PluginInput is ReconcilePlugin's input.
type PluginInput struct {
	Workspace reconcile.Box
	Plugin    Plugin
	DryRun    bool `json:",omitempty"`
	// Remove: the plugin is tracked but no longer declared; Plugin.Version
	// is the tracked one.
	Remove bool `json:",omitempty"`
	// BoxQueue is the worker's own task queue the box work goes to (see
	// route.go); "" is the shared queue.
	BoxQueue string `json:",omitempty"`
}

// ReconcilePlugin probes one plugin on the box, then records it (already
// there) or delivers it (absent or stale) and records it; or, for a plugin
// no longer declared, removes it (see removePlugin).
func ReconcilePlugin(ctx workflow.Context, in PluginInput) (PluginResult, error) {
	if in.Remove {
		return removePlugin(ctx, in)
	}
	ws, p := in.Workspace, in.Plugin
	res := PluginResult{Name: p.Name, Version: p.Version}
	route := routeFor(ws.ID, in.BoxQueue)

	var probe reconcile.Probe
	// A probe is one short command on a shared connection; 45 s covers a
	// fresh connection (20 s dial), and its heartbeat notices a dead worker
	// in 20 s.
	popts := boxOptions(fmt.Sprintf("probe %s on %s", p, ws.InstanceID), 45*time.Second)
	if err := route.exec(ctx, popts, reconcile.ActivityProbeManifest, reconcile.ProbeInput{Workspace: ws, Plugin: p.Name}, &probe); err != nil {
		return res, err
	}
	verdict := reconcile.DecidePlugin(p, probe)
	res.Verdict, res.Reason = verdict, verdict.Reason(p, probe)
	if probe.Present {
		res.BoxVersion = probe.Version
	}
	deliver := verdict.Deliver()
	if in.DryRun {
		res.Action = ActionWouldRecord
		if deliver {
			res.Action = ActionWouldDeliver
		}
		return res, nil
	}

	track := reconcile.TrackInput{WorkspaceID: ws.ID, Plugin: p.Name, Version: p.Version, Digest: probe.Digest, Via: reconcile.ViaBoot}
	res.Action = ActionRecorded
	if deliver {
		var d reconcile.Delivery
		dopts := boxOptions(fmt.Sprintf("deliver %s to %s (%s)", p, ws.InstanceID, res.Reason), 15*time.Minute)
		if err := route.exec(ctx, dopts, reconcile.ActivityDeliverViaEIC, reconcile.DeliverInput{Workspace: ws, Plugin: p.Name, Version: p.Version, Digest: p.Digest}, &d); err != nil {
			return res, err
		}
		track.Digest, track.Via = d.Digest, reconcile.ViaReconcile
		res.Action, res.Digest = ActionDelivered, d.Digest
	}
	tctx := withActivity(ctx, fmt.Sprintf("record %s for %s", p, ws.ID), 30*time.Second, storeRetry)
	if err := workflow.ExecuteActivity(tctx, reconcile.ActivityRecordTracking, track).Get(ctx, nil); err != nil {
		return res, err
	}
	return res, nil
}

// removePlugin removes a plugin no longer declared: off the box, then its
// tracking row. The removal is a change like a delivery: it marks the
// restart before it touches the box, journals its rename on the box, and
// the parent's single restart covers it. In a dry run it only reports.
func removePlugin(ctx workflow.Context, in PluginInput) (PluginResult, error) {
	ws, p := in.Workspace, in.Plugin
	res := PluginResult{Name: p.Name, Version: p.Version, Action: ActionWouldRemove, Reason: "tracked but no longer declared"}
	if in.DryRun {
		return res, nil
	}
	var rm reconcile.Removal
	ropts := boxOptions(fmt.Sprintf("remove %s from %s (no longer declared)", p.Name, ws.InstanceID), 5*time.Minute)
	if err := routeFor(ws.ID, in.BoxQueue).exec(ctx, ropts, reconcile.ActivityRemoveViaEIC, reconcile.RemoveInput{Workspace: ws, Plugin: p.Name}, &rm); err != nil {
		return res, err
	}
	fctx := withActivity(ctx, fmt.Sprintf("forget %s for %s", p.Name, ws.ID), 30*time.Second, storeRetry)
	if err := workflow.ExecuteActivity(fctx, reconcile.ActivityForgetTracking, reconcile.TrackInput{WorkspaceID: ws.ID, Plugin: p.Name}).Get(ctx, nil); err != nil {
		return res, err
	}
	res.Action, res.Changed = ActionRemoved, rm.Changed
	res.Reason = "no longer declared: removed from the box, tracking row deleted"
	if !rm.Changed {
		res.Reason = "no longer declared; the box did not have it: tracking row deleted"
	}
	return res, nil
}
