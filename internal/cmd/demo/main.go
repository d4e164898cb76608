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
	"github.com/plugin-reconciler/plugin-reconciler/internal/service"
	"github.com/plugin-reconciler/plugin-reconciler/workflows"
)

var declared = []workflows.Plugin{
	{Name: "github-tools", Version: "1.2.0"},
	{Name: "mcp-postgres", Version: "0.4.1"},
	{Name: "code-review", Version: "2.0.0"},
	{Name: "slack-notify", Version: "1.0.3"},
	{Name: "sub-agent.planner", Version: "0.9.0"},
}

// scenario is one workspace of the demo and what must hold after its
// reconcile.
type scenario struct {
	Workspace      string
	Story          string
	boot           map[string]string
	WantDeliveries int
	WantRestarts   int
}

func scenarios() []scenario {
	all := func() map[string]string {
		m := map[string]string{}
		for _, p := range declared {
			m[p.Name] = p.Version
		}
		return m
	}
	missing := all()
	delete(missing, "mcp-postgres")
	delete(missing, "slack-notify")
	stale := all()
	stale["github-tools"] = "1.1.0"
	return []scenario{
		{"ws-demo-1", "all 5 plugins boot-installed", all(), 0, 0},
		{"ws-demo-2", "all 5 plugins boot-installed", all(), 0, 0},
		{"ws-demo-3", "all 5 plugins boot-installed", all(), 0, 0},
		{"ws-demo-4", "boot install missed 2 plugins", missing, 2, 1},
		{"ws-demo-5", "github-tools boot-installed at stale 1.1.0", stale, 1, 1},
	}
}

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
	progress := func(format string, args ...any) { fmt.Fprintf(os.Stderr, "» "+format+"\n", args...) }
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))

	state, err := filepath.Abs(*stateDir)
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
		defer pg.Stop()
		if dsn, err = ensureDatabase(ctx, pg, "reconciler"); err != nil {
			return err
		}
	}

	progress("starting Temporal server and Web UI (state in %s)", filepath.Join(state, "temporal"))
	dev, err := devserver.Start(ctx, devserver.Options{
		StateDir: filepath.Join(state, "temporal"), FrontendPort: *frontendPort, UIPort: *uiPort,
		SearchAttributes: workflows.SearchAttributes(),
	})
	if err != nil {
		return err
	}
	defer dev.Stop()

	progress("starting the fake AWS endpoint and the simulated fleet")
	aws, err := fakeaws.Start("us-east-1")
	if err != nil {
		return err
	}
	defer aws.Close()
	fl, err := fleet.New(aws)
	if err != nil {
		return err
	}
	defer fl.Close()

	catDir := filepath.Join(state, "catalog")
	for _, p := range append(declared, workflows.Plugin{Name: "github-tools", Version: "1.1.0"}) {
		if err := catalog.Publish(catDir, p.Name, p.Version, map[string]string{"bin/run": "#!/bin/sh\necho " + p.String() + "\n"}); err != nil {
			return err
		}
	}
	cat, err := catalog.New(catDir)
	if err != nil {
		return err
	}

	cfg := service.Defaults()
	cfg.DatabaseURL, cfg.CatalogDir, cfg.Migrate = dsn, catDir, true
	cfg.AccessMode, cfg.SSHPort = "direct", fl.Port
	cfg.RestartMode, cfg.RestartCommand, cfg.IdentityCommand = "runtime", fleet.RestartCommand, fleet.IdentityCommand
	svc, err := service.New(ctx, cfg, aws.SDKConfig(), logger)
	if err != nil {
		return err
	}
	defer svc.Close()

	c, err := client.Dial(client.Options{HostPort: dev.FrontendAddress(), Namespace: devserver.Namespace, Logger: tlog.NewStructuredLogger(logger)})
	if err != nil {
		return err
	}
	defer c.Close()
	// A state directory from an older version may lack some attributes.
	if err := workflows.EnsureSearchAttributes(ctx, c, devserver.Namespace); err != nil {
		return err
	}
	rw := worker.New(c, workflows.TaskQueue, svc.WorkerOptions())
	svc.Register(rw)
	prov = &provisioner{fleet: fl, catalog: cat, store: svc.Store}
	pw := worker.New(c, ProvisioningQueue, worker.Options{})
	pw.RegisterWorkflow(ProvisionWorkspace)
	pw.RegisterActivity(prov)
	for _, w := range []worker.Worker{rw, pw} {
		if err := w.Start(); err != nil {
			return err
		}
		defer w.Stop()
	}
	progress("worker running on task queue %s; Web UI at %s", workflows.TaskQueue, dev.UIURL())

	report, err := provisionAll(ctx, c, dev, fl, progress)
	if err != nil {
		return err
	}
	allOK := true
	if *asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(report); err != nil {
			return err
		}
	}
	for _, l := range report {
		allOK = allOK && l.OK
		if *asJSON {
			continue
		}
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
	if *once {
		if !allOK {
			return errors.New("an expectation of the scenario did not hold")
		}
		return nil
	}
	fmt.Printf("\nWeb UI: %s — the stack stays up until Ctrl-C.\n", dev.UIURL())
	<-ctx.Done()
	return nil
}

func provisionAll(ctx context.Context, c client.Client, dev *devserver.Server, fl *fleet.Fleet, progress func(string, ...any)) ([]line, error) {
	scs := scenarios()
	runs := make([]client.WorkflowRun, len(scs))
	stamp := time.Now().UTC().Format("20060102T150405")
	for i, sc := range scs {
		var err error
		runs[i], err = c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{
			ID: "provision:" + sc.Workspace + ":" + stamp, TaskQueue: ProvisioningQueue,
		}, ProvisionWorkspace, ProvisionInput{WorkspaceID: sc.Workspace, BootInstalled: sc.boot, Declared: declared})
		if err != nil {
			return nil, err
		}
		progress("%s: provisioning (%s)", sc.Workspace, sc.Story)
	}
	out := make([]line, len(scs))
	for i, sc := range scs {
		var pr ProvisionResult
		if err := runs[i].Get(ctx, &pr); err != nil {
			return nil, fmt.Errorf("provision %s: %w", sc.Workspace, err)
		}
		ui := dev.WorkflowURL(workflows.ReconcileWorkflowID(sc.Workspace), pr.RunID)
		progress("%s: online as %s, reconcile running: %s", sc.Workspace, pr.InstanceID, ui)
		res, err := workflows.Result(ctx, c.GetWorkflow(ctx, workflows.ReconcileWorkflowID(sc.Workspace), pr.RunID))
		l := line{Workspace: sc.Workspace, InstanceID: pr.InstanceID, Story: sc.Story, UI: ui,
			Recorded: res.Count(workflows.ActionRecorded), Delivered: res.Count(workflows.ActionDelivered),
			Restarted: res.Restart.Done, Why: res.Restart.Reason}
		if box := fl.Box(pr.InstanceID); box != nil {
			l.Restarts = box.Restarts()
		}
		switch {
		case err != nil:
			l.Problem = "reconcile failed: " + err.Error()
		case l.Delivered != sc.WantDeliveries:
			l.Problem = fmt.Sprintf("%d deliveries, expected %d", l.Delivered, sc.WantDeliveries)
		case l.Restarts != sc.WantRestarts:
			l.Problem = fmt.Sprintf("box restarted %d times, expected %d", l.Restarts, sc.WantRestarts)
		default:
			l.OK = true
		}
		progress("%s: reconciled: %s", sc.Workspace, res.Summary)
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
