// Package servicetest starts the whole product on real parts for a test: an
// embedded Temporal server, a private Postgres, the simulated fleet, a
// plugin catalog, and the worker built by package service.
package servicetest

import (
	"context"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/client"
	"go.temporal.io/server/temporaltest"

	"github.com/plugin-reconciler/plugin-reconciler/internal/catalog"
	"github.com/plugin-reconciler/plugin-reconciler/internal/fleet"
	"github.com/plugin-reconciler/plugin-reconciler/internal/fleet/fleettest"
	"github.com/plugin-reconciler/plugin-reconciler/internal/pgcluster"
	"github.com/plugin-reconciler/plugin-reconciler/internal/scenario"
	"github.com/plugin-reconciler/plugin-reconciler/internal/service"
	"github.com/plugin-reconciler/plugin-reconciler/internal/store"
	"github.com/plugin-reconciler/plugin-reconciler/workflows"
)

// Declared is the plugin set the stacks' workspaces declare (the demo's,
// see internal/scenario); every plugin is in the catalog, and github-tools
// also at 1.3.0.
var Declared = scenario.Declared

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
	metricsURL string
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
	for _, w := range s.Service.Workers(s.Client) {
		require.NoError(t, w.Start())
		t.Cleanup(w.Stop)
	}
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
	b, err := s.Fleet.Boot(Ctx(s.T), s.Catalog, bootInstalled)
	require.NoError(s.T, err)
	return b
}

// Box boots a box (see BootBox) and registers its workspace, host key left
// to trust on first use.
func (s *Stack) Box(workspace string, bootInstalled map[string]string) *fleet.Box {
	b := s.BootBox(bootInstalled)
	w := b.Workspace(workspace)
	w.HostKey = ""
	require.NoError(s.T, s.Service.Store.UpsertWorkspace(Ctx(s.T), store.Workspace{Box: w}))
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

// Counters is a snapshot of the stack's Prometheus counters, to assert what
// one subtest added to them.
type Counters struct {
	s      *Stack
	url    string
	before string
}

// Counters serves the stack's metrics endpoint (once) and snapshots it.
func (s *Stack) Counters(t testing.TB) *Counters {
	t.Helper()
	if s.metricsURL == "" {
		addr, err := s.Service.Metrics.Serve(Ctx(s.T), "127.0.0.1:0")
		require.NoError(t, err)
		s.metricsURL = "http://" + addr + "/metrics"
	}
	return &Counters{s: s, url: s.metricsURL, before: scrapeAll(t, s.metricsURL)}
}

// Require waits until each sample (name{label="value",...}) has grown by
// its want since the snapshot, and until the key pushes and the SSH
// handshakes have grown by the boxes' own count; it fails if they do not.
func (c *Counters) Require(t testing.TB, box *fleet.Box, want map[string]float64) {
	t.Helper()
	want = maps.Clone(want)
	pushes := float64(c.s.Fleet.AWS.KeyPushes(box.InstanceID))
	want["eic_key_push_total"] = pushes
	want["ssh_handshake_total"] = pushes
	var got map[string]float64
	ok := assert.Eventually(t, func() bool {
		now := scrapeAll(t, c.url)
		got = map[string]float64{}
		for sample := range want {
			got[sample] = sum(now, sample) - sum(c.before, sample)
		}
		return maps.Equal(got, want)
	}, 10*time.Second, 100*time.Millisecond)
	require.True(t, ok, "counters grew by %v, want %v", got, want)
}

func scrapeAll(t testing.TB, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return string(body)
}

// sum adds the samples of a metric whose labels include the given ones
// (name{k="v",...}); the SDK adds labels of its own.
func sum(exposition, sample string) float64 {
	name, want, _ := strings.Cut(strings.TrimSuffix(sample, "}"), "{")
	total := 0.0
	for _, line := range strings.Split(exposition, "\n") {
		metric, value, ok := strings.Cut(line, " ")
		if !ok || strings.HasPrefix(line, "#") {
			continue
		}
		n, labels, _ := strings.Cut(strings.TrimSuffix(metric, "}"), "{")
		if n != name {
			continue
		}
		have := strings.Split(labels, ",")
		match := true
		for _, l := range strings.Split(want, ",") {
			if l != "" && !slices.Contains(have, l) {
				match = false
			}
		}
		if v, err := strconv.ParseFloat(strings.TrimSpace(value), 64); match && err == nil {
			total += v
		}
	}
	return total
}
