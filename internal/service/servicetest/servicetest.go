// Package servicetest starts the whole product on real parts for a test: an
// embedded Temporal server, a private Postgres, the simulated fleet, a
// plugin catalog, and the worker built by package service.
package servicetest

import (
	"context"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/client"
	"go.temporal.io/server/temporaltest"

	"github.com/plugin-reconciler/plugin-reconciler/internal/catalog"
	"github.com/plugin-reconciler/plugin-reconciler/internal/fleet"
	"github.com/plugin-reconciler/plugin-reconciler/internal/fleet/fleettest"
	"github.com/plugin-reconciler/plugin-reconciler/internal/pgcluster"
	"github.com/plugin-reconciler/plugin-reconciler/internal/reconcile"
	"github.com/plugin-reconciler/plugin-reconciler/internal/service"
	"github.com/plugin-reconciler/plugin-reconciler/internal/store"
	"github.com/plugin-reconciler/plugin-reconciler/workflows"
)

// Declared is the plugin set the stacks' workspaces declare; every plugin
// is in the catalog, and github-tools also at 1.3.0.
var Declared = []workflows.Plugin{
	{Name: "github-tools", Version: "1.2.0"},
	{Name: "mcp-postgres", Version: "0.4.1"},
	{Name: "code-review", Version: "2.0.0"},
	{Name: "slack-notify", Version: "1.0.3"},
	{Name: "sub-agent.planner", Version: "0.9.0"},
}

// Stack is a running product.
type Stack struct {
	T          *testing.T
	Fleet      *fleet.Fleet
	Catalog    *catalog.Catalog
	CatalogDir string
	DSN        string
	Service    *service.Service
	Client     client.Client
	Namespace  string
	Frontend   string
}

// Ctx is a context that ends with the test.
func Ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	return c
}

// New starts a stack; it is skipped with -short.
func New(t *testing.T) *Stack {
	if testing.Short() {
		t.Skip("starts Temporal, Postgres and sshd")
	}
	s := &Stack{T: t, Fleet: fleettest.New(t), CatalogDir: t.TempDir()}
	for _, p := range Declared {
		require.NoError(t, catalog.Publish(s.CatalogDir, p.Name, p.Version, map[string]string{"bin/run": "#!/bin/sh\necho " + p.Name + "\n"}))
	}
	require.NoError(t, catalog.Publish(s.CatalogDir, "github-tools", "1.3.0", map[string]string{"bin/run": "#!/bin/sh\necho new\n"}))
	var err error
	s.Catalog, err = catalog.New(s.CatalogDir)
	require.NoError(t, err)

	s.DSN = pgcluster.NewTestDatabase(t)
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	cfg := service.Defaults()
	cfg.DatabaseURL, cfg.CatalogDir, cfg.Migrate = s.DSN, s.CatalogDir, true
	cfg.AccessMode, cfg.SSHPort = "direct", s.Fleet.Port
	cfg.RestartMode, cfg.RestartCommand, cfg.IdentityCommand = "runtime", fleet.RestartCommand, fleet.IdentityCommand
	s.Service, err = service.New(Ctx(t), cfg, s.Fleet.AWS.SDKConfig(), logger)
	require.NoError(t, err)
	t.Cleanup(s.Service.Close)

	ts := temporaltest.NewServer(temporaltest.WithT(t), temporaltest.WithBaseClientOptions(client.Options{MetricsHandler: s.Service.Metrics.Handler}))
	s.Client, s.Namespace, s.Frontend = ts.GetDefaultClient(), ts.GetDefaultNamespace(), ts.GetFrontendHostPort()
	require.NoError(t, workflows.EnsureSearchAttributes(Ctx(t), s.Client, s.Namespace))
	ts.NewWorkerWithOptions(workflows.TaskQueue, s.Service.Register, s.Service.WorkerOptions())
	return s
}

// Bundle is a catalog bundle's bytes.
func (s *Stack) Bundle(name, version string) []byte {
	b, err := s.Catalog.Bundle(context.Background(), name, version)
	require.NoError(s.T, err)
	return b.Data
}

// BootBox starts a box with the named plugins boot-installed (name ->
// version), without registering a workspace for it.
func (s *Stack) BootBox(bootInstalled map[string]string) *fleet.Box {
	boot := map[string][]byte{}
	for name, version := range bootInstalled {
		boot[name] = s.Bundle(name, version)
	}
	b, err := s.Fleet.AddBox(fleet.BoxSpec{BootInstalled: boot})
	require.NoError(s.T, err)
	return b
}

// Box boots a box (see BootBox) and registers its workspace, host key left
// to trust on first use.
func (s *Stack) Box(workspace string, bootInstalled map[string]string) *fleet.Box {
	b := s.BootBox(bootInstalled)
	require.NoError(s.T, s.Service.Store.UpsertWorkspace(Ctx(s.T), store.Workspace{Box: reconcile.Box{ID: workspace, InstanceID: b.InstanceID, Region: fleettest.Region, AvailabilityZone: b.AvailabilityZone, OSUser: s.Fleet.User(), PluginRoot: b.PluginRoot}}))
	return b
}

// All is Declared as name -> version, without the named plugins.
func All(except ...string) map[string]string {
	out := map[string]string{}
	for _, p := range Declared {
		out[p.Name] = p.Version
	}
	for _, e := range except {
		delete(out, e)
	}
	return out
}

// Reconcile triggers a reconcile and waits for its result; it must succeed.
func (s *Stack) Reconcile(workspace string, plugins []workflows.Plugin) workflows.ReconcileResult {
	s.T.Helper()
	run, err := workflows.Start(Ctx(s.T), s.Client, workflows.ReconcileInput{WorkspaceID: workspace, Plugins: plugins})
	require.NoError(s.T, err)
	res, err := workflows.Result(Ctx(s.T), run)
	require.NoError(s.T, err)
	return res
}

// Rows are a workspace's tracking rows by plugin name.
func (s *Stack) Rows(workspace string) map[string]store.Tracking {
	rows, err := s.Service.Store.TrackingRows(Ctx(s.T), workspace)
	require.NoError(s.T, err)
	out := map[string]store.Tracking{}
	for _, r := range rows {
		out[r.PluginName] = r
	}
	return out
}
