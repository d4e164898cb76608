// Command demo runs the plugin reconciler on the embedded default: a real
// Temporal server with its Web UI, a private Postgres, a simulated fleet of
// sshd boxes behind a fake AWS endpoint, and the worker. A small provisioning
// workflow boots five workspaces (three with every plugin boot-installed, one
// missing two, one with a stale version) and triggers their reconciles; the
// demo prints what happened and keeps the stack up until interrupted.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"go.temporal.io/sdk/client"
	tlog "go.temporal.io/sdk/log"
	"go.temporal.io/sdk/worker"

	"github.com/plugin-reconciler/plugin-reconciler/internal/catalog"
	"github.com/plugin-reconciler/plugin-reconciler/internal/devserver"
	"github.com/plugin-reconciler/plugin-reconciler/internal/fakeaws"
	"github.com/plugin-reconciler/plugin-reconciler/internal/fleet"
	"github.com/plugin-reconciler/plugin-reconciler/internal/pgcluster"
	"github.com/plugin-reconciler/plugin-reconciler/internal/scenario"
	"github.com/plugin-reconciler/plugin-reconciler/internal/service"
	"github.com/plugin-reconciler/plugin-reconciler/workflows"
)

// line is one workspace's report.
type line struct {
	Workspace  string
	InstanceID string
	Story      string
	Recorded   int
	Delivered  int
	Restarts   int // counted on the box
	Restarted  bool
	Why        string
	UI         string
	OK         bool
	Problem    string `json:",omitempty"`
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func run() error {
	var (
		stateDir     = flag.String("state", ".state", "directory for the dev stack's state (Temporal's SQLite, Postgres, catalog)")
		once         = flag.Bool("once", false, "exit after the report: status 0 only if every expectation held")
		asJSON       = flag.Bool("json", false, "print the report as JSON")
		frontendPort = flag.Int("temporal-port", devserver.DefaultFrontendPort, "Temporal frontend port")
		uiPort       = flag.Int("ui-port", devserver.DefaultUIPort, "Temporal Web UI port")
	)
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	st := &stack{}
	defer st.close()
	if err := st.start(ctx, *stateDir, *frontendPort, *uiPort); err != nil {
		return err
	}
	report, err := provisionAll(ctx, st.client, st.dev, st.fleet, progress)
	if err != nil {
		return err
	}
	allOK, err := printReport(report, *asJSON)
	if err != nil {
		return err
	}
	if *once {
		if !allOK {
			return errors.New("an expectation of the scenario did not hold")
		}
		return nil
	}
	fmt.Printf("\nWeb UI: %s — the stack stays up until Ctrl-C.\n", st.dev.UIURL())
	<-ctx.Done()
	return nil
}

func progress(format string, args ...any) { fmt.Fprintf(os.Stderr, "» "+format+"\n", args...) }

// stack is the demo's running parts, closed in the reverse order of their
// start.
type stack struct {
	dev     *devserver.Server
	fleet   *fleet.Fleet
	client  client.Client
	closers []func()
}

func (st *stack) close() {
	for i := len(st.closers) - 1; i >= 0; i-- {
		st.closers[i]()
	}
}

// start brings up Postgres (unless DATABASE_URL is set), the Temporal
// server and Web UI, the fake AWS endpoint and the fleet, the catalog, and
// the reconciler's and the provisioning workflow's workers.
func (st *stack) start(ctx context.Context, stateDir string, frontendPort, uiPort int) error {
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	state, err := filepath.Abs(stateDir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(state, 0o755); err != nil {
		return err
	}
	dsn := os.Getenv("DATABASE_URL")
	if dsn == "" {
		progress("starting private Postgres in %s", filepath.Join(state, "postgres"))
		pg, err := pgcluster.Start(ctx, filepath.Join(state, "postgres"), 0)
		if err != nil {
			return err
		}
		st.closers = append(st.closers, pg.Stop)
		if dsn, err = ensureDatabase(ctx, pg, "reconciler"); err != nil {
			return err
		}
	}
	progress("starting Temporal server and Web UI (state in %s)", filepath.Join(state, "temporal"))
	if st.dev, err = devserver.Start(ctx, devserver.Options{
		StateDir: filepath.Join(state, "temporal"), FrontendPort: frontendPort, UIPort: uiPort,
		SearchAttributes: workflows.SearchAttributes(),
	}); err != nil {
		return err
	}
	st.closers = append(st.closers, st.dev.Stop)
	progress("starting the fake AWS endpoint and the simulated fleet")
	aws, err := fakeaws.Start("us-east-1")
	if err != nil {
		return err
	}
	st.closers = append(st.closers, func() { _ = aws.Close() })
	if st.fleet, err = fleet.New(aws); err != nil {
		return err
	}
	st.closers = append(st.closers, func() { _ = st.fleet.Close() })
	catDir := filepath.Join(state, "catalog")
	cat, err := publishCatalog(catDir)
	if err != nil {
		return err
	}
	cfg := service.Defaults()
	cfg.DatabaseURL, cfg.CatalogDir, cfg.Migrate = dsn, catDir, true
	cfg.AccessMode, cfg.SSHPort = "direct", st.fleet.Port
	cfg.RestartMode, cfg.RestartCommand, cfg.IdentityCommand = "runtime", fleet.RestartCommand, fleet.IdentityCommand
	svc, err := service.New(ctx, cfg, aws.SDKConfig(), logger)
	if err != nil {
		return err
	}
	st.closers = append(st.closers, svc.Close)
	return st.startWorkers(ctx, svc, cat, logger)
}

// publishCatalog writes the demo's plugins into a catalog directory.
func publishCatalog(dir string) (*catalog.Catalog, error) {
	for _, p := range scenario.Bundles() {
		if err := catalog.Publish(dir, p.Name, p.Version, map[string]string{"bin/run": "#!/bin/sh\necho " + p.String() + "\n"}); err != nil {
			return nil, err
		}
	}
	return catalog.New(dir)
}

// startWorkers runs the reconciler's worker and the provisioning
// workflow's.
func (st *stack) startWorkers(ctx context.Context, svc *service.Service, cat *catalog.Catalog, logger *slog.Logger) error {
	c, err := client.Dial(client.Options{HostPort: st.dev.FrontendAddress(), Namespace: devserver.Namespace, Logger: tlog.NewStructuredLogger(logger)})
	if err != nil {
		return err
	}
	st.client = c
	st.closers = append(st.closers, c.Close)
	// A state directory from an older version may lack some attributes.
	if err := workflows.EnsureSearchAttributes(ctx, c, devserver.Namespace); err != nil {
		return err
	}
	prov = &provisioner{fleet: st.fleet, catalog: cat, store: svc.Store}
	pw := worker.New(c, ProvisioningQueue, worker.Options{})
	pw.RegisterWorkflow(ProvisionWorkspace)
	pw.RegisterActivity(prov)
	for _, w := range append(svc.Workers(c), pw) {
		if err := w.Start(); err != nil {
			return err
		}
		st.closers = append(st.closers, w.Stop)
	}
	progress("worker running on task queue %s; Web UI at %s", workflows.TaskQueue, st.dev.UIURL())
	return nil
}

// printReport prints one line per workspace (or the JSON) and says whether
// every expectation held.
func printReport(report []line, asJSON bool) (bool, error) {
	allOK := true
	for _, l := range report {
		allOK = allOK && l.OK
	}
	if asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return allOK, enc.Encode(report)
	}
	for _, l := range report {
		mark := "ok"
		if !l.OK {
			mark = "FAILED: " + l.Problem
		}
		restarted := "not restarted"
		if l.Restarted {
			restarted = "restarted once"
		}
		fmt.Printf("%-10s %s  %-44s %d recorded, %d delivered, %s (%s)  [%s]\n    %s\n",
			l.Workspace, l.InstanceID, l.Story, l.Recorded, l.Delivered, restarted, l.Why, mark, l.UI)
	}
	return allOK, nil
}

func provisionAll(ctx context.Context, c client.Client, dev *devserver.Server, fl *fleet.Fleet, progress func(string, ...any)) ([]line, error) {
	scs := scenario.Workspaces()
	runs := make([]client.WorkflowRun, len(scs))
	stamp := time.Now().UTC().Format("20060102T150405")
	for i, sc := range scs {
		var err error
		runs[i], err = c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{
			ID: "provision:" + sc.ID + ":" + stamp, TaskQueue: ProvisioningQueue,
		}, ProvisionWorkspace, ProvisionInput{WorkspaceID: sc.ID, BootInstalled: sc.Boot, Declared: scenario.Declared})
		if err != nil {
			return nil, err
		}
		progress("%s: provisioning (%s)", sc.ID, sc.Story)
	}
	out := make([]line, len(scs))
	for i, sc := range scs {
		var pr ProvisionResult
		if err := runs[i].Get(ctx, &pr); err != nil {
			return nil, fmt.Errorf("provision %s: %w", sc.ID, err)
		}
		ui := dev.WorkflowURL(workflows.ReconcileWorkflowID(sc.ID), pr.RunID)
		progress("%s: online as %s, reconcile running: %s", sc.ID, pr.InstanceID, ui)
		res, err := workflows.Result(ctx, c.GetWorkflow(ctx, workflows.ReconcileWorkflowID(sc.ID), pr.RunID))
		l := line{Workspace: sc.ID, InstanceID: pr.InstanceID, Story: sc.Story, UI: ui,
			Recorded: res.Count(workflows.ActionRecorded), Delivered: res.Count(workflows.ActionDelivered),
			Restarted: res.Restart.Done, Why: res.Restart.Reason}
		if box := fl.Box(pr.InstanceID); box != nil {
			l.Restarts = box.Restarts()
		}
		if err == nil {
			err = sc.Check(l.Delivered, l.Restarts)
		} else {
			err = fmt.Errorf("reconcile failed: %w", err)
		}
		if l.OK = err == nil; !l.OK {
			l.Problem = err.Error()
		}
		progress("%s: reconciled: %s", sc.ID, res.Summary)
		out[i] = l
	}
	return out, nil
}

// ensureDatabase creates the demo's database in the private cluster once.
func ensureDatabase(ctx context.Context, pg *pgcluster.Cluster, name string) (string, error) {
	conn, err := pgx.Connect(ctx, pg.DSN("postgres"))
	if err != nil {
		return "", err
	}
	defer conn.Close(ctx)
	var exists bool
	if err := conn.QueryRow(ctx, "select exists (select 1 from pg_database where datname = $1)", name).Scan(&exists); err != nil {
		return "", err
	}
	if !exists {
		if _, err := pgcluster.CreateDatabase(ctx, pg.DSN("postgres"), name); err != nil {
			return "", err
		}
	}
	return pg.DSN(name), nil
}
