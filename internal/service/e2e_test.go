package service_test

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/client"
	"go.temporal.io/server/temporaltest"

	"github.com/plugin-reconciler/plugin-reconciler/internal/catalog"
	"github.com/plugin-reconciler/plugin-reconciler/internal/fleet"
	"github.com/plugin-reconciler/plugin-reconciler/internal/fleet/fleettest"
	"github.com/plugin-reconciler/plugin-reconciler/internal/pgcluster"
	"github.com/plugin-reconciler/plugin-reconciler/internal/service"
	"github.com/plugin-reconciler/plugin-reconciler/internal/store"
	"github.com/plugin-reconciler/plugin-reconciler/workflows"
)

func TestMain(m *testing.M) { pgcluster.TestMain(m) }

var declared = []workflows.Plugin{
	{Name: "github-tools", Version: "1.2.0"},
	{Name: "mcp-postgres", Version: "0.4.1"},
	{Name: "code-review", Version: "2.0.0"},
	{Name: "slack-notify", Version: "1.0.3"},
	{Name: "sub-agent.planner", Version: "0.9.0"},
}

// stack is the whole product on real parts: an embedded Temporal server,
// Postgres, the simulated fleet and the worker's own wiring.
type stack struct {
	t       *testing.T
	fleet   *fleet.Fleet
	cat     *catalog.Catalog
	catDir  string
	svc     *service.Service
	client  client.Client
	bundles map[string][]byte // name@version -> bundle
}

func newStack(t *testing.T) *stack {
	if testing.Short() {
		t.Skip("starts Temporal, Postgres and sshd")
	}
	s := &stack{t: t, fleet: fleettest.New(t), catDir: t.TempDir(), bundles: map[string][]byte{}}
	for _, p := range declared {
		require.NoError(t, catalog.Publish(s.catDir, p.Name, p.Version, map[string]string{"bin/run": "#!/bin/sh\necho " + p.Name + "\n"}))
	}
	require.NoError(t, catalog.Publish(s.catDir, "github-tools", "1.3.0", map[string]string{"bin/run": "#!/bin/sh\necho new\n"}))
	var err error
	s.cat, err = catalog.New(s.catDir)
	require.NoError(t, err)

	dsn := pgcluster.NewTestDatabase(t)
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	cfg := service.FromEnv()
	cfg.DatabaseURL, cfg.CatalogDir, cfg.Migrate = dsn, s.catDir, true
	cfg.AccessMode, cfg.SSHPort = "direct", s.fleet.Port
	cfg.RestartMode, cfg.RestartCommand, cfg.IdentityCommand = "runtime", fleet.RestartCommand, fleet.IdentityCommand
	s.svc, err = service.New(ctx(t), cfg, s.fleet.AWS.SDKConfig(), logger)
	require.NoError(t, err)
	t.Cleanup(s.svc.Close)

	ts := temporaltest.NewServer(temporaltest.WithT(t))
	ts.NewWorkerWithOptions(workflows.TaskQueue, s.svc.Register, s.svc.WorkerOptions())
	s.client = ts.GetDefaultClient()
	return s
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	return c
}

func (s *stack) bundle(name, version string) []byte {
	b, err := s.cat.Bundle(context.Background(), name, version)
	require.NoError(s.t, err)
	return b.Data
}

// box starts a box with the named plugins boot-installed (at their declared
// version unless overridden) and registers its workspace.
func (s *stack) box(workspace string, bootInstalled map[string]string) *fleet.Box {
	boot := map[string][]byte{}
	for name, version := range bootInstalled {
		boot[name] = s.bundle(name, version)
	}
	b, err := s.fleet.AddBox(fleet.BoxSpec{BootInstalled: boot})
	require.NoError(s.t, err)
	require.NoError(s.t, s.svc.Store.UpsertWorkspace(ctx(s.t), store.Workspace{
		ID: workspace, InstanceID: b.InstanceID, Region: fleettest.Region, AvailabilityZone: b.AvailabilityZone,
		OSUser: s.fleet.User(), PluginRoot: b.PluginRoot,
	}))
	return b
}

func all(except ...string) map[string]string {
	out := map[string]string{}
	for _, p := range declared {
		out[p.Name] = p.Version
	}
	for _, e := range except {
		delete(out, e)
	}
	return out
}

func (s *stack) reconcile(workspace string, plugins []workflows.Plugin) workflows.ReconcileResult {
	s.t.Helper()
	run, err := workflows.Start(ctx(s.t), s.client, workflows.ReconcileInput{WorkspaceID: workspace, Plugins: plugins})
	require.NoError(s.t, err)
	res, err := workflows.Result(ctx(s.t), run)
	require.NoError(s.t, err)
	return res
}

func (s *stack) rows(workspace string) map[string]store.Tracking {
	rows, err := s.svc.Store.TrackingRows(ctx(s.t), workspace)
	require.NoError(s.t, err)
	out := map[string]store.Tracking{}
	for _, r := range rows {
		out[r.PluginName] = r
	}
	return out
}

func TestReconcileEndToEnd(t *testing.T) {
	s := newStack(t)

	t.Run("a: all boot-installed: record only, no restart, one key push", func(t *testing.T) {
		box := s.box("ws-a", all())
		res := s.reconcile("ws-a", declared)
		require.Equal(t, 5, res.Count(workflows.ActionRecorded))
		require.Equal(t, 0, res.Count(workflows.ActionDelivered))
		require.False(t, res.Restart.Done)
		rows := s.rows("ws-a")
		require.Len(t, rows, 5)
		for _, r := range rows {
			require.Equal(t, "boot", r.InstalledVia, r.PluginName)
			require.Nil(t, r.DeliveredAt)
		}
		require.Equal(t, 0, box.Restarts())
		require.Equal(t, 1, s.fleet.AWS.KeyPushes(box.InstanceID))
		require.Equal(t, 1, box.Logins())
		w, err := s.svc.Store.Workspace(ctx(t), "ws-a")
		require.NoError(t, err)
		require.Equal(t, box.HostKey, w.HostKey, "host key trusted on first use and pinned")
	})

	t.Run("b+c: two missing: deliver two, one restart; again: nothing", func(t *testing.T) {
		box := s.box("ws-b", all("mcp-postgres", "slack-notify"))
		res := s.reconcile("ws-b", declared)
		require.Equal(t, 3, res.Count(workflows.ActionRecorded))
		require.Equal(t, 2, res.Count(workflows.ActionDelivered))
		require.True(t, res.Restart.Done)
		require.Equal(t, 1, box.Restarts())
		for _, name := range []string{"mcp-postgres", "slack-notify"} {
			b, err := s.cat.Bundle(ctx(t), name, all()[name])
			require.NoError(t, err)
			onBox, err := os.ReadFile(filepath.Join(box.PluginRoot, name, ".bundle-digest"))
			require.NoError(t, err)
			require.Equal(t, b.Digest, strings.TrimSpace(string(onBox)), "bytes on the box are the catalog's")
			script, err := os.ReadFile(filepath.Join(box.PluginRoot, name, "bin", "run"))
			require.NoError(t, err)
			require.Contains(t, string(script), name)
			require.Equal(t, "reconcile", s.rows("ws-b")[name].InstalledVia)
		}
		w, err := s.svc.Store.Workspace(ctx(t), "ws-b")
		require.NoError(t, err)
		require.Nil(t, w.RestartPendingSince, "pending cleared after the verified restart")
		ledger, err := s.svc.Store.Restarts(ctx(t), "ws-b")
		require.NoError(t, err)
		require.Len(t, ledger, 1)
		require.Equal(t, box.Identity(), ledger[0].IdentityAfter)

		again := s.reconcile("ws-b", declared)
		require.Equal(t, 5, again.Count(workflows.ActionRecorded))
		require.Equal(t, 0, again.Count(workflows.ActionDelivered))
		require.False(t, again.Restart.Done)
		require.Equal(t, 1, box.Restarts(), "no second restart")
		require.Equal(t, "reconcile", s.rows("ws-b")["mcp-postgres"].InstalledVia, "still ours")
	})

	t.Run("d: two triggers at once: one run, one restart", func(t *testing.T) {
		box := s.box("ws-d", all("code-review"))
		var wg sync.WaitGroup
		runs := make([]client.WorkflowRun, 2)
		for i := range runs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var err error
				runs[i], err = workflows.Start(ctx(t), s.client, workflows.ReconcileInput{WorkspaceID: "ws-d", Plugins: declared})
				require.NoError(t, err)
			}()
		}
		wg.Wait()
		require.Equal(t, runs[0].GetRunID(), runs[1].GetRunID(), "the second trigger joined the running reconcile")
		res, err := workflows.Result(ctx(t), runs[0])
		require.NoError(t, err)
		require.Equal(t, 1, res.Count(workflows.ActionDelivered))
		require.Equal(t, 1, box.Restarts())
	})

	t.Run("e: one version upgraded: one delivery, one restart", func(t *testing.T) {
		box := s.box("ws-e", all())
		s.reconcile("ws-e", declared)
		require.Equal(t, 0, box.Restarts())
		upgraded := append([]workflows.Plugin(nil), declared...)
		upgraded[0].Version = "1.3.0"
		res := s.reconcile("ws-e", upgraded)
		require.Equal(t, 1, res.Count(workflows.ActionDelivered))
		require.Equal(t, 4, res.Count(workflows.ActionRecorded))
		require.Equal(t, 1, box.Restarts())
		m, err := os.ReadFile(box.ManifestPath("github-tools"))
		require.NoError(t, err)
		require.Contains(t, string(m), "1.3.0")
		require.Equal(t, "1.3.0", s.rows("ws-e")["github-tools"].Version)
	})
}
