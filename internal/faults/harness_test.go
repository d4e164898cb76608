package faults

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.temporal.io/api/serviceerror"
	"go.temporal.io/sdk/client"
	"go.temporal.io/server/common/testing/freeport"

	"github.com/plugin-reconciler/plugin-reconciler/internal/catalog"
	"github.com/plugin-reconciler/plugin-reconciler/internal/devserver"
	"github.com/plugin-reconciler/plugin-reconciler/internal/fakeaws"
	"github.com/plugin-reconciler/plugin-reconciler/internal/fleet"
	"github.com/plugin-reconciler/plugin-reconciler/internal/pgcluster"
	"github.com/plugin-reconciler/plugin-reconciler/internal/reconcile"
	"github.com/plugin-reconciler/plugin-reconciler/internal/store"
	"github.com/plugin-reconciler/plugin-reconciler/migrations"
	"github.com/plugin-reconciler/plugin-reconciler/workflows"
)

// row is one line of the fault report.
type row struct{ Fault, Happened, Checked string }

var (
	reportMu  sync.Mutex
	report    []row
	workerBin string
	binDir    string // the worker, and the Temporal binaries once built
)

func record(fault, happened, checked string) {
	reportMu.Lock()
	defer reportMu.Unlock()
	report = append(report, row{fault, happened, checked})
}

// TestMain builds the worker once (the suite runs it as a real process) and
// writes the report to $FAULTS_REPORT when set.
func TestMain(m *testing.M) {
	flag.Parse()
	dir, err := os.MkdirTemp("", "faults-bin-")
	if err != nil {
		panic(err)
	}
	binDir = dir
	if !testing.Short() {
		workerBin = filepath.Join(dir, "worker")
		out, err := exec.Command("go", "build", "-o", workerBin, "../../worker").CombinedOutput()
		if err != nil {
			fmt.Fprintf(os.Stderr, "build worker: %v\n%s", err, out)
			os.Exit(1)
		}
	}
	code := m.Run()
	_ = os.RemoveAll(dir)
	if path := os.Getenv("FAULTS_REPORT"); path != "" && code == 0 {
		if err := writeReport(path); err != nil {
			fmt.Fprintln(os.Stderr, "write report:", err)
			code = 1
		}
	}
	os.Exit(code)
}

func writeReport(path string) error {
	reportMu.Lock()
	defer reportMu.Unlock()
	sort.SliceStable(report, func(i, j int) bool { return report[i].Fault < report[j].Fault })
	var b strings.Builder
	fmt.Fprintf(&b, "# Fault suite report\n\nWritten by `make test-faults` (`FAULTS_TRIALS=%s`) on %s, Go %s: embedded Temporal (SQLite file), a private Postgres, sshd boxes behind the fake AWS endpoint, the worker as a separate process. Every row is a check the run made.\n\n",
		trialsEnv(), time.Now().UTC().Format("2006-01-02 15:04 MST"), strings.TrimPrefix(goVersion(), "go version "))
	b.WriteString("| fault | what happened | what was checked |\n|---|---|---|\n")
	for _, r := range report {
		fmt.Fprintf(&b, "| %s | %s | %s |\n", esc(r.Fault), esc(r.Happened), esc(r.Checked))
	}
	stats.write(&b)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, []byte(b.String()), 0o644)
}

func esc(s string) string { return strings.ReplaceAll(strings.ReplaceAll(s, "|", `\|`), "\n", " ") }

func goVersion() string {
	out, _ := exec.Command("go", "version").Output()
	return strings.TrimSpace(string(out))
}

func trialsEnv() string {
	if v := os.Getenv("FAULTS_TRIALS"); v != "" {
		return v
	}
	return "3"
}

func trials() int {
	n, err := strconv.Atoi(trialsEnv())
	if err != nil || n < 1 {
		return 3
	}
	return n
}

var declared = []workflows.Plugin{
	{Name: "github-tools", Version: "1.2.0"},
	{Name: "mcp-postgres", Version: "0.4.1"},
	{Name: "code-review", Version: "2.0.0"},
	{Name: "slack-notify", Version: "1.0.3"},
}

// harness is the real stack with the worker as a separate process.
type harness struct {
	t        *testing.T
	dir      string
	port     int // Temporal frontend, kept across restarts
	dev      *devserver.Server
	prod     *temporalProc // Temporal as its own process (production shape), instead of dev
	pg       *pgcluster.Cluster
	dsn      string
	store    *store.Store
	aws      *fakeaws.Server
	fleet    *fleet.Fleet
	catDir   string
	cat      *catalog.Catalog
	client   client.Client
	workerMu sync.Mutex
	workers  []*workerProc // serving
	draining []*workerProc // sent SIGTERM, not yet exited
	logPath  string
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	t.Cleanup(cancel)
	return c
}

func newHarness(t *testing.T) *harness { return newHarnessWith(t, false) }

// newHarnessWith starts the stack; production: Temporal as its own
// process on Postgres (see production_test.go), every process configured
// from docker-compose.yml's environment.
func newHarnessWith(t *testing.T, production bool) *harness {
	if testing.Short() {
		t.Skip("the fault suite starts the whole stack")
	}
	h := &harness{t: t, dir: t.TempDir(), port: freeport.MustGetFreePort()}
	var err error
	h.pg, err = pgcluster.Start(ctx(t), filepath.Join(os.TempDir(), fmt.Sprintf("faults-pg-%d", h.port)), 0)
	require.NoError(t, err)
	t.Cleanup(func() { h.pg.Stop(); _ = os.RemoveAll(h.pg.Dir) })
	h.dsn, err = pgcluster.CreateDatabase(ctx(t), h.pg.DSN("postgres"), "reconciler")
	require.NoError(t, err)
	_, err = migrations.Apply(ctx(t), h.dsn)
	require.NoError(t, err)
	h.store, err = store.Open(ctx(t), h.dsn)
	require.NoError(t, err)
	t.Cleanup(h.store.Close)

	if production {
		h.prod = h.startProductionTemporal()
	} else {
		h.startTemporal()
		t.Cleanup(func() { h.dev.Stop() })
	}
	h.client, err = client.Dial(client.Options{HostPort: h.frontend(), Namespace: devserver.Namespace})
	require.NoError(t, err)
	t.Cleanup(h.client.Close)
	if production {
		h.setupNamespace()
	}

	h.aws, err = fakeaws.Start("us-east-1")
	require.NoError(t, err)
	t.Cleanup(func() { _ = h.aws.Close() })
	h.fleet, err = fleet.New(h.aws)
	require.NoError(t, err)
	t.Cleanup(func() { _ = h.fleet.Close() })

	h.catDir = filepath.Join(h.dir, "catalog")
	for _, p := range declared {
		require.NoError(t, catalog.Publish(h.catDir, p.Name, p.Version, map[string]string{"bin/run": "#!/bin/sh\necho " + p.Name + "\n"}))
	}
	require.NoError(t, catalog.Publish(h.catDir, "github-tools", "1.1.0", nil))
	h.cat, err = catalog.New(h.catDir)
	require.NoError(t, err)

	h.logPath = filepath.Join(h.dir, "worker.log")
	h.startWorker()
	t.Cleanup(h.killWorker)
	return h
}

func (h *harness) startTemporal() {
	var err error
	h.dev, err = devserver.Start(ctx(h.t), devserver.Options{
		StateDir: filepath.Join(h.dir, "temporal"), FrontendPort: h.port, UIPort: -2,
		SearchAttributes: workflows.SearchAttributes(),
	})
	require.NoError(h.t, err)
}

func (h *harness) restartTemporal(down time.Duration) {
	if h.prod != nil {
		h.prod.restart(h.t, syscall.SIGTERM, down)
		return
	}
	h.dev.Stop()
	time.Sleep(down)
	h.startTemporal()
}

// frontend is Temporal's frontend address.
func (h *harness) frontend() string {
	if h.prod != nil {
		return h.prod.frontend
	}
	return h.dev.FrontendAddress()
}

// workerProc is one worker process.
type workerProc struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when it has exited
}

// startWorker runs one more real worker binary, configured only through
// the environment, as a deployment would; extra settings override the
// fleet's.
func (h *harness) startWorker(extra ...string) {
	logf, err := os.OpenFile(h.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	require.NoError(h.t, err)
	cmd := exec.Command(workerBin)
	if h.prod != nil {
		cmd.Env = h.productionWorkerEnv()
	} else {
		cmd.Env = append(append(os.Environ(), h.fleet.WorkerEnv()...),
			"TEMPORAL_ADDRESS="+h.frontend(), "TEMPORAL_NAMESPACE="+devserver.Namespace,
			"DATABASE_URL="+h.dsn, "CATALOG_DIR="+h.catDir, "MIGRATE=true", "METRICS_ADDR=",
		)
	}
	cmd.Env = append(cmd.Env, extra...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	require.NoError(h.t, cmd.Start())
	logf.Close()
	w := &workerProc{cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(w.done) }()
	h.workerMu.Lock()
	h.workers = append(h.workers, w)
	h.workerMu.Unlock()
}

// stopWorker sends every serving worker SIGTERM, as a deploy does, and
// returns at once; done is closed when they have all exited (they drain
// first).
func (h *harness) stopWorker() (done chan struct{}) {
	h.workerMu.Lock()
	stopping := h.workers
	h.workers = nil
	h.draining = append(h.draining, stopping...)
	h.workerMu.Unlock()
	for _, w := range stopping {
		_ = w.cmd.Process.Signal(syscall.SIGTERM)
	}
	done = make(chan struct{})
	go func() {
		for _, w := range stopping {
			<-w.done
		}
		close(done)
	}()
	return done
}

// killWorker SIGKILLs every worker, draining ones included: no drain, no
// cleanup, as a crash.
func (h *harness) killWorker() {
	h.workerMu.Lock()
	all := append(h.workers, h.draining...)
	h.workers, h.draining = nil, nil
	h.workerMu.Unlock()
	for _, w := range all {
		_ = syscall.Kill(-w.cmd.Process.Pid, syscall.SIGKILL)
	}
	for _, w := range all {
		<-w.done
	}
}

// serving is how many workers are started and not stopped.
func (h *harness) serving() int {
	h.workerMu.Lock()
	defer h.workerMu.Unlock()
	return len(h.workers)
}

// box boots a box with the given plugins boot-installed and registers its
// workspace.
func (h *harness) box(ws string, boot map[string]string) *fleet.Box {
	b, err := h.fleet.Boot(ctx(h.t), h.cat, boot)
	require.NoError(h.t, err)
	require.NoError(h.t, h.store.UpsertWorkspace(ctx(h.t), store.Workspace{Box: b.Workspace(ws)}))
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

func (h *harness) start(ws string, plugins []workflows.Plugin) client.WorkflowRun {
	run, err := workflows.Start(ctx(h.t), h.client, workflows.ReconcileInput{WorkspaceID: ws, Plugins: plugins})
	require.NoError(h.t, err)
	return run
}

// wait waits for a workspace's latest reconcile run to end (following it
// across a Temporal restart).
// completeAll waits for each case's reconcile and checks its box: rows
// exact for the declared plugins, restarted exactly as often as expected.
func (h *harness) completeAll(cases []expect, timeout time.Duration) {
	h.t.Helper()
	for _, c := range cases {
		_, err := h.wait(c.ws, timeout)
		require.NoError(h.t, err, c.ws)
		h.checkBox(c.ws, c.box, declared, c.restarts)
	}
}

func (h *harness) wait(ws string, timeout time.Duration) (workflows.ReconcileResult, error) {
	c, cancel := context.WithTimeout(ctx(h.t), timeout)
	defer cancel()
	for {
		res, err := workflows.Result(c, h.client.GetWorkflow(c, workflows.ReconcileWorkflowID(ws), ""))
		if err == nil || c.Err() != nil || !transient(err) {
			return res, err
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// transient: Temporal could not be reached (it is restarting) or did not
// answer in time; the wait goes on.
func transient(err error) bool {
	var unavailable *serviceerror.Unavailable
	var deadline *serviceerror.DeadlineExceeded
	return errors.As(err, &unavailable) || errors.As(err, &deadline) || errors.Is(err, context.DeadlineExceeded)
}

// checkBox verifies the promises for one workspace: every declared plugin is
// on the box at its version and tracked at that version, and the box
// restarted exactly wantRestarts times.
func (h *harness) checkBox(ws string, b *fleet.Box, plugins []workflows.Plugin, wantRestarts int) {
	h.t.Helper()
	rows, err := h.store.TrackingRows(ctx(h.t), ws)
	require.NoError(h.t, err)
	tracked := map[string]string{}
	for _, r := range rows {
		tracked[r.PluginName] = r.Version
	}
	for _, p := range plugins {
		data, err := os.ReadFile(b.ManifestPath(p.Name))
		require.NoError(h.t, err, "%s: %s missing on the box", ws, p.Name)
		require.Contains(h.t, string(data), "version: "+p.Version, "%s: %s on the box", ws, p.Name)
		require.Equal(h.t, p.Version, tracked[p.Name], "%s: tracking row of %s", ws, p.Name)
	}
	require.Equal(h.t, wantRestarts, b.Restarts(), "%s restarts", ws)
	w, err := h.store.Workspace(ctx(h.t), ws)
	require.NoError(h.t, err)
	require.Nil(h.t, w.RestartPendingSince, "%s: nothing left pending", ws)
}

func storeWorkspace(ws, instance string, h *harness) store.Workspace {
	return store.Workspace{Box: reconcile.Box{ID: ws, InstanceID: instance, Region: "us-east-1", OSUser: h.fleet.User(), PluginRoot: "/tmp/none"}}
}
