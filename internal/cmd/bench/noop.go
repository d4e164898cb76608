package main

import (
	"context"
	"time"

	"github.com/plugin-reconciler/plugin-reconciler/internal/catalog"
	"github.com/plugin-reconciler/plugin-reconciler/internal/onbox"
	"github.com/plugin-reconciler/plugin-reconciler/internal/reconcile"
	"github.com/plugin-reconciler/plugin-reconciler/internal/store"
)

// noop is box access, store and catalog that do nothing: activities built on
// it cost only their orchestration, the floor ours is measured against.
type noop struct{ version string }

func (n noop) ReadManifest(_ context.Context, _ reconcile.Box, name string) ([]byte, error) {
	return reconcile.Manifest{Name: name, Version: n.version}.Marshal(), nil
}
func (noop) Install(_ context.Context, _ reconcile.Box, name, version string, _ []byte, _ func(int64)) (onbox.Installed, error) {
	return onbox.Installed{Manifest: reconcile.Manifest{Name: name, Version: version}.Marshal()}, nil
}
func (noop) ReadRestartState(context.Context, reconcile.Box) (string, string, error) {
	return "noop", "", nil
}
func (noop) RestartRuntime(context.Context, reconcile.Box, string, bool) (onbox.RestartReply, error) {
	return onbox.RestartReply{Result: onbox.RestartNotNeeded, Identity: "noop"}, nil
}
func (noop) RebootInstance(context.Context, reconcile.Box) error  { return nil }
func (noop) InstanceRunning(context.Context, reconcile.Box) error { return nil }
func (noop) PruneJournal(context.Context, reconcile.Box) error    { return nil }
func (noop) Workspace(_ context.Context, id string) (store.Workspace, error) {
	return store.Workspace{Box: reconcile.Box{ID: id, InstanceID: "i-0000000000000001", Region: "us-east-1", OSUser: "ubuntu", PluginRoot: store.DefaultPluginRoot}, Status: "active"}, nil
}
func (noop) RecordTracking(context.Context, store.Tracking) error { return nil }
func (noop) MarkRestartPending(context.Context, string, string) (time.Time, error) {
	return time.Time{}, nil
}
func (noop) UnmarkRestartPending(context.Context, string, string, time.Time) error { return nil }
func (noop) SealRestartMark(context.Context, string, string, string) error         { return nil }
func (noop) RestartState(context.Context, string) (store.RestartState, error) {
	return store.RestartState{}, nil
}
func (noop) IssueRestart(_ context.Context, r store.Restart) (store.Restart, bool, error) {
	return r, true, nil
}
func (noop) CompleteRestart(context.Context, string, string, string, string) error { return nil }
func (noop) FailRestart(context.Context, string, string, string) error             { return nil }
func (noop) ClearRestartPending(context.Context, string, time.Time) error          { return nil }
func (noop) ActiveWorkspaces(context.Context, string, int) ([]store.Declared, error) {
	return nil, nil
}
func (noop) Bundle(context.Context, string, string) (catalog.Bundle, error) {
	return catalog.Bundle{}, nil
}
func (noop) Remove(context.Context, reconcile.Box, string) (onbox.Removed, error) {
	return onbox.Removed{}, nil
}

// Declare stands for a declaration already reconciled in full: what a sweep
// of a converged fleet finds.
func (noop) Declare(_ context.Context, in reconcile.DeclareInput, _, _ string) (store.Declaration, []reconcile.Plugin, error) {
	return store.Declaration{WorkspaceID: in.WorkspaceID, Plugins: reconcile.Declare(nil, in.Plugins, in.Prune), Generation: 1, ObservedGeneration: 1}, nil, nil
}
func (noop) Observe(context.Context, string, int64) error         { return nil }
func (noop) ForgetTracking(context.Context, string, string) error { return nil }
