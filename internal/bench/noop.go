package main

import (
	"context"
	"time"

	"github.com/plugin-reconciler/plugin-reconciler/internal/catalog"
	"github.com/plugin-reconciler/plugin-reconciler/internal/eic"
	"github.com/plugin-reconciler/plugin-reconciler/internal/plugin"
	"github.com/plugin-reconciler/plugin-reconciler/internal/store"
)

// noop is box access, store and catalog that do nothing: activities built on
// it cost only their orchestration, the floor ours is measured against.
type noop struct{ version string }

func (n noop) ReadManifest(_ context.Context, _ eic.Target, name string) ([]byte, error) {
	return plugin.Manifest{Name: name, Version: n.version}.Marshal(), nil
}
func (noop) Install(context.Context, eic.Target, string, []byte, func(int64)) (bool, error) {
	return false, nil
}
func (noop) RuntimeIdentity(context.Context, eic.Target) (string, error) { return "noop", nil }
func (noop) RestartRuntime(context.Context, eic.Target) error            { return nil }
func (noop) RebootInstance(context.Context, eic.Target) error            { return nil }
func (noop) WaitForNewIdentity(context.Context, eic.Target, string, func()) (string, error) {
	return "noop+", nil
}
func (noop) Workspace(_ context.Context, id string) (store.Workspace, error) {
	return store.Workspace{ID: id, InstanceID: "i-0000000000000001", Region: "us-east-1", OSUser: "ubuntu",
		PluginRoot: store.DefaultPluginRoot, Status: "active"}, nil
}
func (noop) RecordTracking(context.Context, store.Tracking) error          { return nil }
func (noop) MarkRestartPending(context.Context, string, string) error      { return nil }
func (noop) SealRestartMark(context.Context, string, string, string) error { return nil }
func (noop) RestartState(context.Context, string) (store.RestartState, error) {
	return store.RestartState{}, nil
}
func (noop) BeginRestart(_ context.Context, r store.Restart) (store.Restart, error) {
	return r, nil
}
func (noop) CompleteRestart(context.Context, store.Restart, string) error { return nil }
func (noop) ClearRestartPending(context.Context, string, time.Time) error { return nil }
func (noop) ActiveWorkspaces(context.Context, string, int) ([]store.Declared, error) {
	return nil, nil
}
func (noop) Bundle(context.Context, string, string) (catalog.Bundle, error) {
	return catalog.Bundle{}, nil
}
